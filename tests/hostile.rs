//! Misbehaving clients over real sockets: every protocol violation is
//! answered with the right close code and the TCP connection ends; garbage,
//! truncation and impossible lengths never hurt the server, which keeps
//! serving well-behaved clients afterwards.

mod common;

use std::time::{Duration, Instant};

use common::*;
use wsgate::protocol::frame::OpCode;

/// Upgrades a raw client, sends `bytes`, and expects close `code` then EOF;
/// then checks the server still serves a normal client.
fn violation(server: &wsgate::ServerHandle, bytes: &[u8], code: u16) {
    let mut c = RawClient::upgraded(server.local_addr());
    c.send(bytes);
    c.expect_close(code);
    assert_healthy(server);
}

#[test]
fn an_unmasked_client_frame_gets_1002() {
    let server = start_echo(|_| {});
    violation(&server, &[0x81, 0x02, b'h', b'i'], 1002);
    assert_eq!(server.total_stats().protocol_errors, 1);
    assert_eq!(server.total_stats().messages_in, 1, "only the check's echo");
}

#[test]
fn reserved_bits_without_an_extension_get_1002() {
    let server = start_echo(|_| {});
    for rsv in [0x40u8, 0x20, 0x10] {
        let mut f = client_frame(true, OpCode::Text, b"compressed?");
        f[0] |= rsv;
        violation(&server, &f, 1002);
    }
}

#[test]
fn reserved_opcodes_get_1002() {
    let server = start_echo(|_| {});
    for op in [0x3u8, 0x7, 0xB, 0xF] {
        let mut f = client_frame(true, OpCode::Binary, b"x");
        f[0] = 0x80 | op;
        violation(&server, &f, 1002);
    }
}

#[test]
fn bad_control_frames_get_1002() {
    let server = start_echo(|_| {});
    // Ping with 126 bytes (control payloads are at most 125).
    violation(
        &server,
        &client_frame(true, OpCode::Ping, &[7u8; 126]),
        1002,
    );
    // Fragmented ping.
    violation(&server, &client_frame(false, OpCode::Ping, b"frag"), 1002);
    // Close with 126 bytes.
    let mut long_close = close_payload(1000, &[b'r'; 124]);
    assert_eq!(long_close.len(), 126);
    violation(
        &server,
        &client_frame(true, OpCode::Close, &long_close),
        1002,
    );
    long_close.truncate(125);
    // ...while 125 is fine.
    let mut c = RawClient::upgraded(server.local_addr());
    c.send_frame(true, OpCode::Close, &long_close);
    c.expect_close(1000);
}

#[test]
fn non_minimal_length_encodings_get_1002() {
    let server = start_echo(|_| {});
    // 5 bytes announced with the 16-bit form.
    let mut f = vec![0x82, 0x80 | 126, 0, 5];
    f.extend_from_slice(&MASK);
    f.extend_from_slice(&[0u8; 5]);
    violation(&server, &f, 1002);
    // 300 bytes announced with the 64-bit form.
    let mut f = vec![0x82, 0x80 | 127];
    f.extend_from_slice(&300u64.to_be_bytes());
    f.extend_from_slice(&MASK);
    f.extend_from_slice(&[0u8; 300]);
    violation(&server, &f, 1002);
}

#[test]
fn fragment_sequence_violations_get_1002() {
    let server = start_echo(|_| {});
    // Continuation without a message in progress.
    violation(
        &server,
        &client_frame(true, OpCode::Continuation, b"orphan"),
        1002,
    );
    // A new data frame while a fragmented message is in progress.
    let mut b = client_frame(false, OpCode::Text, b"start");
    b.extend(client_frame(true, OpCode::Binary, b"interloper"));
    violation(&server, &b, 1002);
    // ...also after a complete message: the next continuation is an orphan.
    let mut b = client_frame(false, OpCode::Text, b"a");
    b.extend(client_frame(true, OpCode::Continuation, b"b"));
    b.extend(client_frame(true, OpCode::Continuation, b"c"));
    let mut c = RawClient::upgraded(server.local_addr());
    c.send(&b);
    assert_eq!(c.frame(), (OpCode::Text, b"ab".to_vec()));
    c.expect_close(1002);
}

#[test]
fn invalid_utf8_text_gets_1007() {
    let server = start_echo(|_| {});
    // One frame.
    violation(
        &server,
        &client_frame(true, OpCode::Text, b"caf\xc3\x28"),
        1007,
    );
    // Valid fragments that end mid code point at the final frame.
    let mut b = client_frame(false, OpCode::Text, b"ok ");
    b.extend(client_frame(true, OpCode::Continuation, b"\xE2\x82"));
    violation(&server, &b, 1007);
    // Surrogates encoded in UTF-8 are not valid UTF-8.
    violation(
        &server,
        &client_frame(true, OpCode::Text, b"\xED\xA0\x80"),
        1007,
    );
}

#[test]
fn invalid_utf8_in_a_later_fragment_fails_fast_without_waiting_for_fin() {
    let server = start_echo(|_| {});
    let mut c = RawClient::upgraded(server.local_addr());
    c.send_frame(false, OpCode::Text, "valid start é".as_bytes());
    assert_eq!(
        c.next_within(Duration::from_millis(150)),
        Got::TimedOut,
        "valid fragment must not close"
    );
    let t0 = Instant::now();
    // Invalid second fragment; no FIN is ever sent.
    c.send_frame(false, OpCode::Continuation, b"then \xff\xfe");
    c.expect_close(1007);
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    // And inside a single unfinished frame: the declared length is never
    // completed, but the bad bytes that did arrive are enough.
    let mut c = RawClient::upgraded(server.local_addr());
    let f = client_frame(
        true,
        OpCode::Text,
        &[b"abc\xc0\xaf".as_slice(), &[b'x'; 1000]].concat(),
    );
    c.send(&f[..f.len() - 500]);
    c.expect_close(1007);
    assert_healthy(&server);
}

#[test]
fn a_2_pow_63_length_closes_the_connection() {
    let server = start_echo(|_| {});
    let mut c = RawClient::upgraded(server.local_addr());
    let mut f = vec![0x82, 0x80 | 127];
    f.extend_from_slice(&(1u64 << 63).to_be_bytes());
    f.extend_from_slice(&MASK);
    f.extend_from_slice(b"payload that will never be complete");
    c.send(&f);
    let code = c.close_code();
    assert!(code == 1002 || code == 1009, "close code {code}");
    c.expect_eof();
    assert_healthy(&server);
}

#[test]
fn frames_and_messages_over_the_size_limit_get_1009_at_once() {
    let server = start_echo(|c| c.max_message_size = Some(1024));
    // One frame over the limit.
    violation(
        &server,
        &client_frame(true, OpCode::Binary, &[0u8; 1025]),
        1009,
    );
    // Fragments that add up to more than the limit.
    let mut b = client_frame(false, OpCode::Text, &[b'a'; 600]);
    b.extend(client_frame(true, OpCode::Continuation, &[b'b'; 600]));
    violation(&server, &b, 1009);
    // A header announcing 1 TiB is refused from the header alone, without
    // waiting for (or buffering) the payload.
    let mut c = RawClient::upgraded(server.local_addr());
    let mut f = vec![0x82, 0x80 | 127];
    f.extend_from_slice(&(1u64 << 40).to_be_bytes());
    f.extend_from_slice(&MASK);
    c.send(&f);
    c.expect_close(1009);
    assert_healthy(&server);
}

#[test]
fn max_fragments_is_enforced_with_1009() {
    let server = start_echo(|c| c.max_fragments = 4);
    let mut b = client_frame(false, OpCode::Binary, b"1");
    for _ in 0..3 {
        b.extend(client_frame(false, OpCode::Continuation, b"n"));
    }
    b.extend(client_frame(true, OpCode::Continuation, b"5"));
    violation(&server, &b, 1009);
    // Exactly the limit is fine.
    let mut c = RawClient::upgraded(server.local_addr());
    let mut b = client_frame(false, OpCode::Binary, b"1");
    for _ in 0..2 {
        b.extend(client_frame(false, OpCode::Continuation, b"n"));
    }
    b.extend(client_frame(true, OpCode::Continuation, b"4"));
    c.send(&b);
    assert_eq!(c.frame(), (OpCode::Binary, b"1nn4".to_vec()));
}

#[test]
fn truncated_frame_then_client_eof_is_cleaned_up_and_others_are_served() {
    let server = start_echo(|_| {});
    let addr = server.local_addr();
    // A bystander connected before and after.
    let mut bystander = RawClient::upgraded(addr);
    for cut in [1usize, 2, 5, 10, 50] {
        let mut c = RawClient::upgraded(addr);
        let f = client_frame(true, OpCode::Binary, &[9u8; 100]);
        c.send(&f[..cut]);
        c.tcp.shutdown(std::net::Shutdown::Write).unwrap();
        // The server closes its side too (it owes nothing: no close frame
        // was received, nor can one be sent meaningfully) without a panic.
        match c.next() {
            Got::Eof | Got::Reset => {}
            other => panic!("cut at {cut}: expected the connection to end, got {other:?}"),
        }
    }
    // Also mid-message (a fragment and a half).
    let mut c = RawClient::upgraded(addr);
    let mut b = client_frame(false, OpCode::Text, b"first half");
    let second = client_frame(true, OpCode::Continuation, b"second half");
    b.extend_from_slice(&second[..8]);
    c.send(&b);
    drop(c);
    eventually(
        Duration::from_secs(2),
        "truncated connections released",
        || server.total_stats().open == 1,
    );
    bystander.send_frame(true, OpCode::Text, b"unaffected");
    assert_eq!(bystander.frame(), (OpCode::Text, b"unaffected".to_vec()));
    assert_healthy(&server);
    let t = server.total_stats();
    assert_eq!(t.abrupt_closes, 6);
    assert_eq!(t.protocol_errors, 0);
}

#[test]
fn random_bytes_instead_of_a_request_get_400_and_close() {
    let server = start_echo(|_| {});
    for seed in 1..=8u64 {
        let mut garbage = pseudo_random(seed, 2048);
        // A request never starts with a control byte; make sure the garbage
        // is not a (slow) prefix of something valid.
        garbage[0] = 0x01;
        let mut c = RawClient::connect(server.local_addr());
        c.send(&garbage);
        let r = c.read_response();
        assert_eq!(r.status, 400, "seed {seed}: {:?}", r.head);
        assert_eq!(r.header("Connection"), Some("close"));
    }
    // Binary noise behind a plausible request line.
    let mut c = RawClient::connect(server.local_addr());
    let mut b = b"GET /ws HTTP/1.1\r\nHost: x\r\n".to_vec();
    b.extend(pseudo_random(77, 512).iter().map(|x| x | 0x80));
    b.extend_from_slice(b"\r\n\r\n");
    c.send(&b);
    assert_eq!(c.read_response().status, 400);
    assert_eq!(server.total_stats().rejected_bad_request, 9);
    assert_healthy(&server);
}

#[test]
fn random_bytes_after_the_upgrade_get_a_protocol_close() {
    let server = start_echo(|_| {});
    for seed in 1..=8u64 {
        let mut c = RawClient::upgraded(server.local_addr());
        c.send(&pseudo_random(seed * 1000, 4096));
        // The bytes are fixed per seed, so this is deterministic: every one
        // of these seeds is refused with a close frame (never left hanging).
        let code = c.close_code();
        assert!(
            [1002, 1007, 1009].contains(&code),
            "seed {seed}: close code {code}"
        );
        c.expect_eof();
    }
    assert_eq!(server.total_stats().protocol_errors, 8);
    assert_healthy(&server);
}

#[test]
fn a_client_dribbling_header_bytes_forever_is_still_cut_at_the_handshake_timeout() {
    let server = start_echo(|c| c.handshake_timeout = Duration::from_millis(300));
    let mut c = RawClient::connect(server.local_addr());
    c.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Slow: ");
    let t0 = Instant::now();
    let ended = loop {
        // Each byte is progress, but the deadline is for the whole head.
        let _ = std::io::Write::write_all(&mut c.tcp, b"a");
        match c.next_within(Duration::from_millis(20)) {
            Got::TimedOut => {}
            other => break other,
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "a slow head keeps the connection open"
        );
    };
    assert!(matches!(ended, Got::Eof | Got::Reset), "{ended:?}");
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t0.elapsed()
    );
    eventually(
        Duration::from_secs(1),
        "counted as a handshake timeout",
        || server.total_stats().handshake_timeouts == 1,
    );
    assert_healthy(&server);
}

#[test]
fn clients_that_reset_mid_handshake_or_mid_message_are_released() {
    let server = start_echo(|_| {});
    let addr = server.local_addr();
    let reset = |c: RawClient| {
        socket2::SockRef::from(&c.tcp)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c); // RST instead of FIN
    };
    let mut half_request = RawClient::connect(addr);
    half_request.send(b"GET /ws HTTP/1.1\r\nHost:");
    reset(half_request);
    let mut mid_message = RawClient::upgraded(addr);
    mid_message.send_frame(false, OpCode::Binary, &[1u8; 1000]);
    reset(mid_message);
    let mut mid_frame = RawClient::upgraded(addr);
    let f = client_frame(true, OpCode::Binary, &[2u8; 1000]);
    mid_frame.send(&f[..300]);
    reset(mid_frame);
    eventually(Duration::from_secs(2), "every connection released", || {
        let t = server.total_stats();
        t.open == 0 && t.closed == 3
    });
    assert_eq!(server.admitted(), 0);
    assert_healthy(&server);
}
