//! The close handshake over real sockets: the server echoes the peer's code
//! and then closes TCP; invalid close frames get 1002 or 1007.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;
use wsgate::protocol::frame::{encode_server_frame, OpCode};

#[test]
fn close_1000_with_a_reason_is_answered_with_1000_then_tcp_closes() {
    let server = start_echo(|_| {});
    let mut c = RawClient::upgraded(server.local_addr());
    c.send_frame(true, OpCode::Text, b"before");
    assert_eq!(c.frame(), (OpCode::Text, b"before".to_vec()));
    let t0 = Instant::now();
    c.send_frame(true, OpCode::Close, &close_payload(1000, b"bye now"));
    c.expect_close(1000);
    // The server closes TCP right after its close frame, it does not wait
    // for the close timeout.
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    eventually(Duration::from_secs(2), "connection released", || {
        let t = server.total_stats();
        t.open == 0 && t.peer_closes == 1
    });
    assert_eq!(server.total_stats().protocol_errors, 0);
}

#[test]
fn application_and_registered_codes_are_echoed() {
    let server = start_echo(|_| {});
    for code in [4000u16, 1001, 1003, 1011, 3000, 4999] {
        let mut c = RawClient::upgraded(server.local_addr());
        c.send_frame(true, OpCode::Close, &close_payload(code, b"reason"));
        c.expect_close(code);
    }
    // An empty close (no code) is answered with 1000.
    let mut c = RawClient::upgraded(server.local_addr());
    c.send_frame(true, OpCode::Close, b"");
    c.expect_close(1000);
    assert_eq!(server.total_stats().protocol_errors, 0);
}

#[test]
fn frames_after_the_close_frame_are_not_echoed() {
    let server = start_echo(|_| {});
    let mut c = RawClient::upgraded(server.local_addr());
    let mut bytes = client_frame(true, OpCode::Close, &close_payload(1000, b""));
    bytes.extend(client_frame(true, OpCode::Text, b"too late"));
    bytes.extend(client_frame(true, OpCode::Ping, b"too late"));
    c.send(&bytes);
    c.expect_close(1000);
    assert_eq!(server.total_stats().messages_in, 0);
}

#[test]
fn a_one_byte_close_payload_gets_1002() {
    let server = start_echo(|_| {});
    let mut c = RawClient::upgraded(server.local_addr());
    c.send_frame(true, OpCode::Close, &[0x03]);
    c.expect_close(1002);
    assert_healthy(&server);
}

#[test]
fn close_codes_that_may_not_be_on_the_wire_get_1002() {
    let server = start_echo(|_| {});
    for code in [1005u16, 1006, 1015, 0, 999, 1004, 1016, 2999, 5000, 65535] {
        let mut c = RawClient::upgraded(server.local_addr());
        c.send_frame(true, OpCode::Close, &close_payload(code, b""));
        let got = c.close_code();
        assert_eq!(got, 1002, "answer to close code {code}");
        c.expect_eof();
    }
    assert_eq!(server.total_stats().protocol_errors, 10);
}

#[test]
fn a_close_reason_that_is_not_utf8_gets_1007() {
    let server = start_echo(|_| {});
    let mut c = RawClient::upgraded(server.local_addr());
    c.send_frame(
        true,
        OpCode::Close,
        &close_payload(1000, b"bad \xff\xfe reason"),
    );
    c.expect_close(1007);
    // A truncated multi-byte sequence at the end is invalid too.
    let mut c = RawClient::upgraded(server.local_addr());
    c.send_frame(true, OpCode::Close, &close_payload(1000, b"euro \xE2\x82"));
    c.expect_close(1007);
    assert_healthy(&server);
}

#[test]
fn tungstenite_close_handshake_completes_cleanly() {
    let server = start_echo(|_| {});
    let mut ws = connect(server.local_addr());
    ws.send(Message::text("x")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("x"));
    ws.close(Some(CloseFrame {
        code: CloseCode::Library(4321),
        reason: "done".into(),
    }))
    .unwrap();
    let answer = match ws.read() {
        Ok(Message::Close(f)) => f,
        Ok(other) => panic!("unexpected {other:?}"),
        Err(e) => panic!("no close answer: {e}"),
    };
    assert_eq!(answer.map(|f| u16::from(f.code)), Some(4321));
    match ws.read() {
        Err(tungstenite::Error::ConnectionClosed) => {}
        other => panic!("expected ConnectionClosed, got {other:?}"),
    }
    eventually(Duration::from_secs(2), "server released it", || {
        server.total_stats().open == 0
    });
}

#[test]
fn a_close_frame_followed_at_once_by_the_clients_fin_is_still_answered() {
    // A client may half-close (shutdown its write side) right after its
    // close frame; it can still read, and RFC 6455 §5.5.1 says the server
    // MUST answer a close frame with a close frame.
    // Whether the frame and the FIN reach the server in one wake-up is up
    // to timing, so try a few times.
    let server = start_echo(|_| {});
    for i in 0..5 {
        let mut c = RawClient::upgraded(server.local_addr());
        c.send_frame(true, OpCode::Close, &close_payload(1000, b"bye"));
        c.tcp.shutdown(std::net::Shutdown::Write).unwrap();
        let code = match c.next() {
            Got::Frame(OpCode::Close, p) => u16::from_be_bytes([p[0], p[1]]),
            other => panic!("attempt {i}: no close frame in answer, got {other:?}"),
        };
        assert_eq!(code, 1000);
        c.expect_eof();
    }
}

/// A client sends a message larger than the socket buffers, then
/// (optionally) its close frame, then half-closes and only then reads, slowly
/// (so the server's send buffer stays full and most of the echo waits in its
/// queue), until EOF. Returns what it sent and everything it read.
fn send_half_close_then_read_slowly(close_frame: bool) -> (Vec<u8>, Vec<u8>) {
    // With the outbound cap above the echo the server never stops reading,
    // so it meets the FIN while most of the echo is still queued. (With a
    // smaller cap it meets it after reading resumes at half the cap, with
    // up to that much queued: the same path.)
    let server = start_echo(|c| c.max_outbound_bytes = 32 << 20);
    let mut c = RawClient::upgraded(server.local_addr());
    socket2::SockRef::from(&c.tcp)
        .set_recv_buffer_size(64 << 10)
        .unwrap();
    let msg = pseudo_random(12, 8 << 20);
    c.send_frame(true, OpCode::Binary, &msg);
    if close_frame {
        c.send_frame(true, OpCode::Close, &close_payload(1000, b""));
    }
    c.tcp.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < until, "no EOF after {} bytes", got.len());
        match c.tcp.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read failed after {} bytes: {e}", got.len()),
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    (msg, got)
}

#[test]
fn a_clients_fin_does_not_discard_the_echo_and_close_reply_still_queued() {
    // RFC 6455 §5.5.1, §7.1.1: the close frame is answered, and the FIN only
    // ends the client's sending.
    let (msg, got) = send_half_close_then_read_slowly(true);
    let mut want = encode_server_frame(OpCode::Binary, &msg);
    want.extend_from_slice(&encode_server_frame(OpCode::Close, &1000u16.to_be_bytes()));
    assert_eq!(got.len(), want.len(), "bytes before EOF");
    assert!(got == want, "echo or close reply altered");
}

#[test]
fn a_fin_without_a_close_frame_still_gets_the_queued_echo() {
    // No close handshake took place: the server sends what it owes, then
    // closes.
    let (msg, got) = send_half_close_then_read_slowly(false);
    let want = encode_server_frame(OpCode::Binary, &msg);
    assert_eq!(got.len(), want.len(), "bytes before EOF");
    assert!(got == want, "echo altered");
}

#[test]
fn a_half_closed_client_that_never_reads_is_dropped_after_the_close_timeout() {
    // Draining what a half-closed peer is owed is bounded by the close
    // timeout, like every other wait for a closing peer.
    let server = start_echo(|c| {
        c.max_outbound_bytes = 32 << 20;
        c.close_timeout = Duration::from_millis(300);
    });
    let mut c = RawClient::upgraded(server.local_addr());
    socket2::SockRef::from(&c.tcp)
        .set_recv_buffer_size(64 << 10)
        .unwrap();
    c.send_frame(true, OpCode::Binary, &pseudo_random(13, 8 << 20));
    c.tcp.shutdown(std::net::Shutdown::Write).unwrap();
    eventually(Duration::from_secs(5), "the echo is queued", || {
        server.total_stats().queued_bytes > 0
    });
    let t0 = Instant::now();
    eventually(Duration::from_secs(3), "released", || {
        server.total_stats().open == 0
    });
    assert!(
        t0.elapsed() >= Duration::from_millis(150),
        "released before the close timeout: {:?}",
        t0.elapsed()
    );
    assert_eq!(server.total_stats().queued_bytes, 0, "queue not accounted");
}

#[test]
fn after_a_server_close_the_clients_answer_ends_the_connection_at_once() {
    // Close and drain timeouts are long: only the client's answer can end
    // these connections soon.
    let server = start_echo(|c| {
        c.close_timeout = Duration::from_secs(30);
        c.drain_timeout = Duration::from_secs(5);
    });
    let addr = server.local_addr();
    // After a protocol error (the rest of the stream is not parsed any
    // more), the client's FIN ends it.
    let mut c = RawClient::upgraded(addr);
    c.send(&[0x81, 0x00]); // unmasked
    c.expect_close(1002); // close frame, then the server's FIN
    c.tcp.shutdown(std::net::Shutdown::Write).unwrap();
    eventually(
        Duration::from_secs(2),
        "released on the client's FIN",
        || server.total_stats().open == 0,
    );
    // After a going-away close (shutdown), the client's close frame ends it.
    let mut c = RawClient::upgraded(addr);
    server.shutdown();
    c.expect_close(1001);
    c.send_frame(true, OpCode::Close, &close_payload(1001, b""));
    eventually(
        Duration::from_secs(2),
        "released on the close frame",
        || server.total_stats().open == 0,
    );
    let t0 = Instant::now();
    drop(server);
    assert!(t0.elapsed() < Duration::from_secs(2), "drain waited");
}

#[test]
fn a_client_that_never_answers_the_servers_close_is_dropped_after_the_close_timeout() {
    let server = start_echo(|c| c.close_timeout = Duration::from_millis(300));
    let addr = server.local_addr();
    // After a protocol error...
    let mut c = RawClient::upgraded(addr);
    c.send(&[0x81, 0x00]);
    c.expect_close(1002);
    // ...and after an HTTP refusal; neither client closes its side.
    let mut h = RawClient::connect(addr);
    h.send(upgrade_request("/elsewhere", SAMPLE_KEY).as_bytes());
    assert_eq!(h.read_response().status, 404);
    let t0 = Instant::now();
    assert_eq!(server.total_stats().open, 2, "both wait for the peer");
    eventually(Duration::from_secs(2), "both released", || {
        server.total_stats().open == 0
    });
    assert!(
        t0.elapsed() >= Duration::from_millis(100),
        "released before the close timeout: {:?}",
        t0.elapsed()
    );
    drop((c, h));
}
