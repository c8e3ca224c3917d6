//! The echo app over real sockets: every message comes back exactly, with
//! its opcode, at every length-encoding boundary, up to 10 MiB, reassembled
//! from fragments with control frames in between, and in order.

mod common;

use std::time::Duration;

use common::*;
use tungstenite::Message;
use wsgate::protocol::frame::OpCode;

/// `n` bytes of printable ASCII (valid UTF-8, position-dependent).
fn ascii(n: usize) -> String {
    (0..n).map(|i| (b'a' + (i % 26) as u8) as char).collect()
}

fn echo(ws: &mut Ws, m: Message) -> Message {
    ws.send(m).expect("send");
    loop {
        match ws.read().expect("read echo") {
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return other,
        }
    }
}

#[test]
fn text_binary_and_empty_messages_round_trip() {
    let server = start_echo(|_| {});
    let mut ws = connect(server.local_addr());
    let cases = [
        Message::text("hello"),
        Message::text("héllo wörld, 日本語, 🌍🚀"),
        Message::text(""),
        Message::binary(vec![0u8, 1, 2, 255, 254, 0x80]),
        Message::binary(Vec::new()),
        Message::binary(b"not utf-8: \xff\xfe".to_vec()),
    ];
    for m in cases {
        assert_eq!(echo(&mut ws, m.clone()), m);
    }
    let t = server.total_stats();
    assert_eq!(t.messages_in, 6);
    assert_eq!(t.messages_out, 6);
}

#[test]
fn every_length_encoding_boundary_round_trips_with_minimal_headers() {
    let server = start_echo(|_| {});
    let sizes = [0usize, 1, 125, 126, 127, 65535, 65536, 65537];
    // tungstenite client.
    let mut ws = connect(server.local_addr());
    for &n in &sizes {
        let text = Message::text(ascii(n));
        assert_eq!(echo(&mut ws, text.clone()), text, "text of {n} bytes");
        let bin = Message::binary(pseudo_random(n as u64 + 7, n));
        assert_eq!(echo(&mut ws, bin.clone()), bin, "binary of {n} bytes");
    }
    // Raw client: the decoder used here rejects non-minimal length
    // encodings, so this also checks the server's headers at 125/126 and
    // 65535/65536.
    let mut c = RawClient::upgraded(server.local_addr());
    for &n in &sizes {
        let payload = pseudo_random(n as u64 + 99, n);
        c.send_frame(true, OpCode::Binary, &payload);
        let (op, got) = c.frame();
        assert_eq!(op, OpCode::Binary);
        assert_eq!(got.len(), n);
        assert!(got == payload, "binary of {n} bytes differs");
    }
}

#[test]
fn a_10_mib_binary_message_round_trips_exactly() {
    let server = start_echo(|_| {});
    let mut ws = connect(server.local_addr());
    let payload = pseudo_random(42, 10 << 20);
    let got = echo(&mut ws, Message::binary(payload.clone()));
    let Message::Binary(got) = got else {
        panic!("expected binary, got another kind");
    };
    assert_eq!(got.len(), payload.len());
    assert!(got == payload, "10 MiB echo differs");
    // And the connection is still usable afterwards.
    assert_eq!(
        echo(&mut ws, Message::text("after")),
        Message::text("after")
    );
}

#[test]
fn fragmented_text_with_an_interleaved_ping_comes_back_whole() {
    let server = start_echo(|_| {});
    let mut c = RawClient::upgraded(server.local_addr());
    c.send_frame(false, OpCode::Text, b"Hel");
    c.send_frame(true, OpCode::Ping, b"ping payload");
    // The ping is answered in the middle of the message, before it ends.
    assert_eq!(c.frame(), (OpCode::Pong, b"ping payload".to_vec()));
    c.send_frame(false, OpCode::Continuation, b"lo, ");
    // Nothing is echoed before the final fragment.
    assert_eq!(
        c.next_within(Duration::from_millis(200)),
        Got::TimedOut,
        "a partial message was echoed"
    );
    c.send_frame(true, OpCode::Continuation, b"world");
    assert_eq!(c.frame(), (OpCode::Text, b"Hello, world".to_vec()));
    assert_eq!(server.total_stats().messages_in, 1);
}

#[test]
fn fragments_in_one_write_and_split_code_points_reassemble() {
    let server = start_echo(|_| {});
    let mut c = RawClient::upgraded(server.local_addr());
    // "€" is E2 82 AC: split one code point across three fragments, with a
    // ping and a pong between them, all in one write.
    let mut bytes = client_frame(false, OpCode::Text, b"price: \xE2");
    bytes.extend(client_frame(true, OpCode::Ping, b""));
    bytes.extend(client_frame(false, OpCode::Continuation, b"\x82"));
    bytes.extend(client_frame(true, OpCode::Pong, b"unsolicited"));
    bytes.extend(client_frame(true, OpCode::Continuation, b"\xAC5"));
    c.send(&bytes);
    assert_eq!(c.frame(), (OpCode::Pong, Vec::new()));
    assert_eq!(c.frame(), (OpCode::Text, "price: €5".as_bytes().to_vec()));
    // A binary message in 100 fragments, some empty.
    let payload = pseudo_random(5, 100 * 1000);
    let mut bytes = Vec::new();
    for (i, chunk) in payload.chunks(1000).enumerate() {
        let op = if i == 0 {
            OpCode::Binary
        } else {
            OpCode::Continuation
        };
        bytes.extend(client_frame(false, op, chunk));
        bytes.extend(client_frame(false, OpCode::Continuation, b""));
    }
    bytes.extend(client_frame(true, OpCode::Continuation, b""));
    c.send(&bytes);
    let (op, got) = c.frame();
    assert_eq!(op, OpCode::Binary);
    assert!(got == payload, "reassembled binary differs");
    // The unsolicited pong got no answer: nothing else is pending.
    assert_eq!(c.next_within(Duration::from_millis(100)), Got::TimedOut);
}

#[test]
fn ping_with_125_bytes_gets_an_identical_pong() {
    let server = start_echo(|_| {});
    let mut c = RawClient::upgraded(server.local_addr());
    let payload = pseudo_random(125, 125);
    c.send_frame(true, OpCode::Ping, &payload);
    assert_eq!(c.frame(), (OpCode::Pong, payload));
}

#[test]
fn many_messages_in_one_write_all_echo_in_order() {
    let server = start_echo(|_| {});
    let mut c = RawClient::upgraded(server.local_addr());
    let n = 500;
    let mut bytes = Vec::new();
    for i in 0..n {
        if i % 2 == 0 {
            bytes.extend(client_frame(
                true,
                OpCode::Text,
                format!("msg-{i}").as_bytes(),
            ));
        } else {
            bytes.extend(client_frame(
                true,
                OpCode::Binary,
                &(i as u32).to_be_bytes(),
            ));
        }
    }
    c.send(&bytes);
    for i in 0..n {
        let (op, p) = c.frame();
        if i % 2 == 0 {
            assert_eq!((op, p), (OpCode::Text, format!("msg-{i}").into_bytes()));
        } else {
            assert_eq!((op, p), (OpCode::Binary, (i as u32).to_be_bytes().to_vec()));
        }
    }
    assert_eq!(c.next_within(Duration::from_millis(100)), Got::TimedOut);

    // The same through tungstenite: queue many, flush once.
    let mut ws = connect(server.local_addr());
    for i in 0..1000 {
        ws.write(Message::text(format!("t{i}"))).unwrap();
    }
    ws.flush().unwrap();
    for i in 0..1000 {
        match ws.read().unwrap() {
            Message::Text(t) => assert_eq!(t, format!("t{i}")),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(server.total_stats().messages_in, n as u64 + 1000);
}

#[test]
fn a_message_of_exactly_the_size_limit_is_echoed() {
    let server = start_echo(|c| c.max_message_size = Some(1024));
    let mut c = RawClient::upgraded(server.local_addr());
    let payload = pseudo_random(1, 1024);
    c.send_frame(true, OpCode::Binary, &payload);
    assert_eq!(c.frame(), (OpCode::Binary, payload.clone()));
    // Also when it arrives in fragments that add up to exactly the limit.
    c.send_frame(false, OpCode::Binary, &payload[..512]);
    c.send_frame(true, OpCode::Continuation, &payload[512..]);
    assert_eq!(c.frame(), (OpCode::Binary, payload));
}

#[test]
fn frames_split_at_odd_offsets_across_writes_are_unmasked_and_validated_correctly() {
    let server = start_echo(|_| {});
    let mut c = RawClient::upgraded(server.local_addr());
    // A text frame whose multi-byte characters and mask phase straddle
    // every write boundary (7-byte writes; the mask repeats every 4).
    let text = "αβγ €uro 🌍 ".repeat(40);
    let frame = client_frame(true, OpCode::Text, text.as_bytes());
    for chunk in frame.chunks(7) {
        c.send(chunk);
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(c.frame(), (OpCode::Text, text.clone().into_bytes()));
    // A fragmented message with a ping split across writes in its middle.
    c.send_frame(false, OpCode::Text, b"one ");
    let ping = client_frame(true, OpCode::Ping, b"split ping payload");
    c.send(&ping[..5]);
    std::thread::sleep(Duration::from_millis(20));
    c.send(&ping[5..]);
    assert_eq!(c.frame(), (OpCode::Pong, b"split ping payload".to_vec()));
    let last = client_frame(true, OpCode::Continuation, b"two");
    c.send(&last[..1]);
    std::thread::sleep(Duration::from_millis(20));
    c.send(&last[1..]);
    assert_eq!(c.frame(), (OpCode::Text, b"one two".to_vec()));
}

#[test]
fn a_client_that_writes_far_more_than_it_reads_gets_every_echo_in_order() {
    // 16 MiB of echoes against a 1 MiB outbound cap: the server must stop
    // reading while the client does not read, and resume when it does.
    let server = start_echo(|c| c.max_outbound_bytes = 1 << 20);
    let mut c = RawClient::upgraded(server.local_addr());
    let n = 256;
    let size = 64 * 1024;
    let mut writer = c.tcp.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        for i in 0..n {
            let mut payload = vec![(i % 251) as u8; size];
            payload[..4].copy_from_slice(&(i as u32).to_be_bytes());
            writer
                .write_all(&client_frame(true, OpCode::Binary, &payload))
                .unwrap();
        }
    });
    // Let the server's queue fill and reading pause; it must stay near the
    // cap (the server may overshoot by what one read produced).
    let mut peak = 0;
    let until = std::time::Instant::now() + Duration::from_millis(400);
    while std::time::Instant::now() < until {
        peak = peak.max(server.total_stats().queued_bytes);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        peak > 0,
        "nothing was ever queued: the test did not back up"
    );
    assert!(
        peak < 2 << 20,
        "queue grew to {peak} bytes past the 1 MiB cap"
    );
    for i in 0..n {
        let (op, p) = c.frame();
        assert_eq!(op, OpCode::Binary);
        assert_eq!(p.len(), size);
        assert_eq!(u32::from_be_bytes([p[0], p[1], p[2], p[3]]), i as u32);
        assert!(p[4..].iter().all(|&b| b == (i % 251) as u8), "message {i}");
    }
    sender.join().unwrap();
    assert_eq!(server.total_stats().messages_in, n as u64);
    assert_eq!(server.total_stats().queued_bytes, 0);
}
