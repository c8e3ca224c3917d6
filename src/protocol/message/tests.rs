//! Unit tests of the receive state machine: every RFC rule, every split.

use super::*;
use crate::protocol::frame::write_client_frame;

use super::OwnedEvent as Ev;

fn frame(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_client_frame(&mut out, fin, op, [0x37, 0xfa, 0x21, 0x3d], payload);
    out
}

fn raw_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = frame(true, OpCode::Binary, payload);
    f[0] = b0;
    f
}

/// Feeds `wire` in pieces of the given sizes; returns the events and the result.
fn run_split(
    wire: &[u8],
    sizes: &[usize],
    limits: ReceiverLimits,
) -> (Vec<Ev>, Result<(), ProtocolError>) {
    let mut rx = Receiver::new();
    let mut pool = PartialPool::default();
    let mut events = Vec::new();
    let mut rest = wire.to_vec();
    let mut i = 0;
    let mut result = Ok(());
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].min(rest.len());
        let mut chunk: Vec<u8> = rest.drain(..n).collect();
        result = rx.feed(&mut chunk, &limits, &mut pool, &mut |e| {
            events.push(e.to_owned_event())
        });
        if result.is_err() {
            break;
        }
        i += 1;
    }
    if result.is_ok() && !rx.holds_buffer() {
        assert!(pool.pooled() <= 1);
    }
    (events, result)
}

/// Runs `wire` whole and in every uniform split size up to 20 and some odd
/// patterns, and checks that all agree.
fn run(wire: &[u8]) -> (Vec<Ev>, Result<(), ProtocolError>) {
    run_limits(wire, ReceiverLimits::default())
}

fn run_limits(wire: &[u8], limits: ReceiverLimits) -> (Vec<Ev>, Result<(), ProtocolError>) {
    let whole = run_split(wire, &[usize::MAX], limits);
    let mut patterns: Vec<Vec<usize>> = (1..20).map(|n| vec![n]).collect();
    patterns.push(vec![1, 7, 2, 50]);
    patterns.push(vec![13, 1]);
    for p in patterns {
        let got = run_split(wire, &p, limits);
        assert_eq!(got, whole, "split {p:?}");
    }
    whole
}

#[test]
fn single_frame_messages() {
    let mut wire = frame(true, OpCode::Text, "héllo".as_bytes());
    wire.extend(frame(true, OpCode::Binary, &[0, 1, 2, 255]));
    wire.extend(frame(true, OpCode::Text, b""));
    let (ev, r) = run(&wire);
    assert_eq!(r, Ok(()));
    assert_eq!(
        ev,
        vec![
            Ev::Text("héllo".into()),
            Ev::Binary(vec![0, 1, 2, 255]),
            Ev::Text(String::new())
        ]
    );
}

#[test]
fn every_length_class_round_trips() {
    for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70000] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        let wire = frame(true, OpCode::Binary, &payload);
        for sizes in [vec![usize::MAX], vec![1000], vec![7, 4096]] {
            let (ev, r) = run_split(&wire, &sizes, ReceiverLimits::default());
            assert_eq!(r, Ok(()));
            assert_eq!(ev, vec![Ev::Binary(payload.clone())], "len {len}");
        }
    }
}

#[test]
fn fragmented_message_with_interleaved_control_frames() {
    let mut wire = frame(false, OpCode::Text, b"frag");
    wire.extend(frame(true, OpCode::Ping, b"p1"));
    wire.extend(frame(false, OpCode::Continuation, b"men"));
    wire.extend(frame(true, OpCode::Pong, b""));
    wire.extend(frame(true, OpCode::Continuation, b"ted"));
    wire.extend(frame(false, OpCode::Binary, b""));
    wire.extend(frame(true, OpCode::Continuation, b""));
    let (ev, r) = run(&wire);
    assert_eq!(r, Ok(()));
    assert_eq!(
        ev,
        vec![
            Ev::Ping(b"p1".to_vec()),
            Ev::Pong(vec![]),
            Ev::Text("fragmented".into()),
            Ev::Binary(vec![])
        ]
    );
}

#[test]
fn continuation_rules() {
    // Continuation with nothing to continue.
    let (_, r) = run(&frame(true, OpCode::Continuation, b"x"));
    assert_eq!(r, Err(ProtocolError::UnexpectedContinuation));
    // New data frame inside a fragmented message.
    let mut wire = frame(false, OpCode::Text, b"a");
    wire.extend(frame(true, OpCode::Text, b"b"));
    let (_, r) = run(&wire);
    assert_eq!(r, Err(ProtocolError::ExpectedContinuation));
    assert_eq!(r.unwrap_err().close_code(), CloseCode::PROTOCOL_ERROR);
}

#[test]
fn structural_errors_close_with_1002() {
    for wire in [
        raw_frame(0x81 | 0x40, b"rsv1"),
        raw_frame(0x83, b"reserved op"),
        raw_frame(0x8B, b"reserved control op"),
        frame(false, OpCode::Ping, b"fragmented ping"),
        frame(true, OpCode::Ping, &[0u8; 126]),
        vec![0x81, 0x03, b'a', b'b', b'c'], // unmasked
    ] {
        let (ev, r) = run(&wire);
        assert!(ev.is_empty());
        assert_eq!(
            r.unwrap_err().close_code(),
            CloseCode::PROTOCOL_ERROR,
            "{wire:x?}"
        );
    }
}

#[test]
fn invalid_utf8_fails_fast_across_fragments() {
    // Valid first fragment; the second carries an impossible byte, and the
    // message never finishes: the error must come anyway.
    let mut wire = frame(false, OpCode::Text, "κόσμε".as_bytes());
    wire.extend(frame(false, OpCode::Continuation, b"\xf4\x90"));
    let (ev, r) = run(&wire);
    assert!(ev.is_empty());
    assert_eq!(r, Err(ProtocolError::InvalidUtf8));
    assert_eq!(r.unwrap_err().close_code(), CloseCode::INVALID_PAYLOAD);

    // A code point split across fragments is fine.
    let euro = "€".as_bytes();
    let mut wire = frame(false, OpCode::Text, &euro[..1]);
    wire.extend(frame(false, OpCode::Continuation, &euro[1..2]));
    wire.extend(frame(true, OpCode::Continuation, &euro[2..]));
    assert_eq!(run(&wire), (vec![Ev::Text("€".into())], Ok(())));

    // A message that ends mid-code-point is invalid.
    let mut wire = frame(false, OpCode::Text, b"ok");
    wire.extend(frame(true, OpCode::Continuation, &euro[..2]));
    assert_eq!(run(&wire).1, Err(ProtocolError::InvalidUtf8));

    // A single invalid frame.
    assert_eq!(
        run(&frame(true, OpCode::Text, b"\xed\xa0\x80")).1,
        Err(ProtocolError::InvalidUtf8)
    );
}

#[test]
fn close_frames() {
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice("bye".as_bytes());
    let mut wire = frame(true, OpCode::Close, &payload);
    // Anything after the close is ignored.
    wire.extend(frame(true, OpCode::Text, b"ignored"));
    assert_eq!(
        run(&wire),
        (vec![Ev::Close(Some(1000), "bye".into())], Ok(()))
    );

    assert_eq!(
        run(&frame(true, OpCode::Close, b"")).0,
        vec![Ev::Close(None, String::new())]
    );
    assert_eq!(
        run(&frame(true, OpCode::Close, &[0x03])).1,
        Err(ProtocolError::BadClose(CloseCode::PROTOCOL_ERROR))
    );
    assert_eq!(
        run(&frame(true, OpCode::Close, &1005u16.to_be_bytes())).1,
        Err(ProtocolError::BadClose(CloseCode::PROTOCOL_ERROR))
    );
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.extend_from_slice(b"\xff");
    assert_eq!(
        run(&frame(true, OpCode::Close, &bad_reason)).1,
        Err(ProtocolError::BadClose(CloseCode::INVALID_PAYLOAD))
    );
}

#[test]
fn size_limits_give_1009() {
    let limits = ReceiverLimits {
        max_frame_bytes: 100,
        max_message_bytes: 150,
        max_fragments: 3,
    };
    let (_, r) = run_limits(&frame(true, OpCode::Binary, &[0; 101]), limits);
    assert_eq!(r, Err(ProtocolError::FrameTooBig));
    assert_eq!(r.unwrap_err().close_code(), CloseCode::MESSAGE_TOO_BIG);

    let mut wire = frame(false, OpCode::Binary, &[0; 100]);
    wire.extend(frame(true, OpCode::Continuation, &[0; 51]));
    assert_eq!(
        run_limits(&wire, limits).1,
        Err(ProtocolError::MessageTooBig)
    );

    let mut wire = frame(false, OpCode::Binary, b"a");
    for _ in 0..3 {
        wire.extend(frame(false, OpCode::Continuation, b"b"));
    }
    assert_eq!(
        run_limits(&wire, limits).1,
        Err(ProtocolError::TooManyFragments)
    );

    // A 2^63-1 length is refused at the header, before any payload arrives.
    let mut rx = Receiver::new();
    let mut pool = PartialPool::default();
    let mut hdr = vec![
        0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4,
    ];
    let r = rx.feed(&mut hdr, &ReceiverLimits::default(), &mut pool, &mut |_| {});
    assert_eq!(r, Err(ProtocolError::FrameTooBig));
    assert!(rx.is_done());
}

#[test]
fn idle_receiver_holds_no_buffer() {
    let mut rx = Receiver::new();
    let mut pool = PartialPool::default();
    let limits = ReceiverLimits::default();
    let mut wire = frame(true, OpCode::Text, b"hello");
    let (a, b) = wire.split_at_mut(8);
    rx.feed(a, &limits, &mut pool, &mut |_| {}).unwrap();
    assert!(rx.holds_buffer(), "mid-message: buffer held");
    let mut got = 0;
    rx.feed(b, &limits, &mut pool, &mut |_| got += 1).unwrap();
    assert_eq!(got, 1);
    assert!(!rx.holds_buffer(), "idle again: buffer returned");
    assert_eq!(pool.pooled(), 1);
    // A partial header alone costs no heap.
    let mut two = frame(true, OpCode::Text, b"x");
    rx.feed(&mut two[..1], &limits, &mut pool, &mut |_| {})
        .unwrap();
    assert!(!rx.holds_buffer());
}

#[test]
fn truncated_frames_just_wait() {
    let wire = frame(true, OpCode::Text, b"incomplete payload");
    for cut in 0..wire.len() {
        let (ev, r) = run_split(&wire[..cut], &[3], ReceiverLimits::default());
        assert!(ev.is_empty());
        assert_eq!(r, Ok(()));
    }
}

#[test]
fn the_reassembly_budget_is_shared_and_given_back() {
    let budget = Arc::new(ReassemblyBudget::new(100));
    let mut pool_a = PartialPool::with_budget(budget.clone());
    let mut pool_b = PartialPool::with_budget(budget.clone());
    let limits = ReceiverLimits::default();
    let mut a = Receiver::new();
    let mut b = Receiver::new();
    let mut none = |_: Event<'_>| {};
    // A holds 60 bytes of an unfinished message.
    let mut first = frame(false, OpCode::Binary, &[1; 60]);
    a.feed(&mut first, &limits, &mut pool_a, &mut none).unwrap();
    assert_eq!(budget.held(), 60);
    // B may not start a 50-byte one on another worker's pool.
    let mut other = frame(false, OpCode::Binary, &[2; 50]);
    assert_eq!(
        b.feed(&mut other, &limits, &mut pool_b, &mut none),
        Err(ProtocolError::ReassemblyBudget)
    );
    assert_eq!(
        ProtocolError::ReassemblyBudget.close_code(),
        CloseCode::MESSAGE_TOO_BIG
    );
    // A finishes: its bytes come back, and a message that arrives whole
    // never counts.
    let mut last = frame(true, OpCode::Continuation, &[1; 10]);
    let mut got = 0;
    a.feed(&mut last, &limits, &mut pool_a, &mut |e| {
        if let Event::Message(_, p) = e {
            got = p.len();
        }
    })
    .unwrap();
    assert_eq!((got, budget.held()), (70, 0));
    let mut whole = frame(true, OpCode::Binary, &[3; 90]);
    let mut c = Receiver::new();
    c.feed(&mut whole, &limits, &mut pool_b, &mut none).unwrap();
    assert_eq!(budget.held(), 0);
    // A connection that goes away mid-message gives its share back.
    let mut again = frame(false, OpCode::Text, b"abc");
    c.feed(&mut again, &limits, &mut pool_b, &mut none).unwrap();
    assert_eq!(budget.held(), 3);
    c.release(&mut pool_b);
    assert_eq!(budget.held(), 0);
}

// --- permessage-deflate (RFC 7692) ------------------------------------------

use crate::protocol::deflate::{Agreed, Deflater};

fn agreed() -> Agreed {
    Agreed {
        server_max_window_bits: 15,
        window_requested: false,
    }
}

/// Feeds `wire` in pieces to a receiver with deflate negotiated (or not).
fn run_deflate(
    wire: &[u8],
    step: usize,
    negotiated: bool,
    limits: ReceiverLimits,
) -> (Vec<Ev>, Result<(), ProtocolError>) {
    let mut rx = Receiver::new();
    if negotiated {
        rx.enable_deflate(agreed());
    }
    let mut pool = PartialPool::default();
    let mut events = Vec::new();
    let mut result = Ok(());
    for piece in wire.chunks(step) {
        let mut chunk = piece.to_vec();
        result = rx.feed(&mut chunk, &limits, &mut pool, &mut |e| {
            events.push(e.to_owned_event())
        });
        if result.is_err() {
            break;
        }
    }
    (events, result)
}

fn compressed(payload: &[u8]) -> Vec<u8> {
    Deflater::default().compress(payload, 15).unwrap().to_vec()
}

/// `frame` with RSV1 set.
fn rsv1(mut f: Vec<u8>) -> Vec<u8> {
    f[0] |= 0x40;
    f
}

#[test]
fn compressed_messages_inflate_whole_or_fragmented_in_any_split() {
    let text = "permessage-deflate ".repeat(50);
    let c = compressed(text.as_bytes());
    let one = rsv1(frame(true, OpCode::Text, &c));
    let (a, b) = c.split_at(c.len() / 2);
    let mut frag = rsv1(frame(false, OpCode::Text, a));
    frag.extend(frame(true, OpCode::Ping, b"p"));
    frag.extend(frame(true, OpCode::Continuation, b));
    // An uncompressed message may follow a compressed one (§6.1).
    frag.extend(frame(true, OpCode::Text, b"plain"));
    for step in [1, 3, 7, 64, usize::MAX] {
        let (ev, r) = run_deflate(&one, step, true, ReceiverLimits::default());
        assert_eq!(
            (ev, r),
            (vec![Ev::Text(text.clone())], Ok(())),
            "step {step}"
        );
        let (ev, r) = run_deflate(&frag, step, true, ReceiverLimits::default());
        assert_eq!(r, Ok(()));
        assert_eq!(
            ev,
            vec![
                Ev::Ping(b"p".to_vec()),
                Ev::Text(text.clone()),
                Ev::Text("plain".into())
            ]
        );
    }
}

#[test]
fn rsv1_is_a_protocol_error_where_the_rfc_forbids_it() {
    let c = compressed(&[b'a'; 300]);
    // Not negotiated.
    let (_, r) = run_deflate(
        &rsv1(frame(true, OpCode::Text, &c)),
        9,
        false,
        Default::default(),
    );
    assert_eq!(r, Err(ProtocolError::Frame(FrameError::ReservedBits)));
    // On a control frame.
    let (_, r) = run_deflate(
        &rsv1(frame(true, OpCode::Ping, b"x")),
        9,
        true,
        Default::default(),
    );
    assert_eq!(r, Err(ProtocolError::CompressedControl));
    // On a continuation frame.
    let mut w = rsv1(frame(false, OpCode::Binary, &c[..5]));
    w.extend(rsv1(frame(true, OpCode::Continuation, &c[5..])));
    let (_, r) = run_deflate(&w, 9, true, Default::default());
    assert_eq!(r, Err(ProtocolError::CompressedContinuation));
    assert_eq!(r.unwrap_err().close_code(), CloseCode::PROTOCOL_ERROR);
    // RSV2 and RSV3 stay reserved.
    let (_, r) = run_deflate(&raw_frame(0xA2, b"x"), 9, true, Default::default());
    assert_eq!(r, Err(ProtocolError::Frame(FrameError::ReservedBits)));
}

#[test]
fn the_size_limit_applies_to_the_inflated_message() {
    // 1 MiB of zeros is about 1 KiB compressed: a bomb against a 64 KiB limit.
    let c = compressed(&vec![0u8; 1 << 20]);
    assert!(c.len() < 2048, "{}", c.len());
    let limits = ReceiverLimits {
        max_message_bytes: 64 << 10,
        max_frame_bytes: 64 << 10,
        ..Default::default()
    };
    for step in [100, usize::MAX] {
        let (ev, r) = run_deflate(&rsv1(frame(true, OpCode::Binary, &c)), step, true, limits);
        assert_eq!((ev, r), (vec![], Err(ProtocolError::MessageTooBig)));
    }
    assert_eq!(
        ProtocolError::MessageTooBig.close_code(),
        CloseCode::MESSAGE_TOO_BIG
    );
    // Exactly at the limit is fine.
    let c = compressed(&vec![0u8; 64 << 10]);
    let (ev, r) = run_deflate(&rsv1(frame(true, OpCode::Binary, &c)), 1000, true, limits);
    assert_eq!((ev, r), (vec![Ev::Binary(vec![0; 64 << 10])], Ok(())));
}

#[test]
fn inflated_text_must_be_utf8_and_garbage_is_1007() {
    let c = compressed(&[0xff; 200]);
    let (_, r) = run_deflate(
        &rsv1(frame(true, OpCode::Text, &c)),
        7,
        true,
        Default::default(),
    );
    assert_eq!(r, Err(ProtocolError::InvalidUtf8));
    let (_, r) = run_deflate(
        &rsv1(frame(true, OpCode::Binary, &[0xff; 40])),
        7,
        true,
        Default::default(),
    );
    assert_eq!(r, Err(ProtocolError::BadDeflate));
    assert_eq!(
        ProtocolError::BadDeflate.close_code(),
        CloseCode::INVALID_PAYLOAD
    );
}
