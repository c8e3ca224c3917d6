//! Arbitrary bytes as a client's stream, through the streaming `Receiver`.
//!
//! Input layout: 4 bytes of settings, then the wire bytes.
//!   [0] max frame size, [1] max message size, [2] max fragments (all small,
//!   so the limits are hit), [3] seed of the TCP chunking; its top bit
//!   negotiates permessage-deflate (RSV1 messages are inflated within the
//!   message limit).
//! The stream is fed three ways: in one piece, one byte at a time, and in
//! pseudo-random chunks. All three must report the same events and the same
//! outcome (chunking is invisible to the application), and every event obeys
//! the RFC: text is UTF-8, messages respect the limits, control payloads are
//! at most 125 bytes, nothing follows a close frame or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::protocol::deflate::Agreed;
use wsgate::protocol::frame::MAX_CONTROL_PAYLOAD;
use wsgate::protocol::message::{
    Event, MessageKind, PartialPool, ProtocolError, Receiver, ReceiverLimits,
};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let limits = ReceiverLimits {
        max_frame_bytes: 1 + data[0] as u64 * 4,
        max_message_bytes: 1 + data[1] as u64 * 8,
        max_fragments: 1 + (data[2] % 16) as u32,
    };
    let seed = data[3];
    let deflate = seed & 0x80 != 0;
    let wire = &data[4..];

    let whole = run(wire, &limits, deflate, |_| usize::MAX);
    let bytewise = run(wire, &limits, deflate, |_| 1);
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seed as u64;
    let max_chunk = [2usize, 7, 16, 64, 300][seed as usize % 5];
    let random = run(wire, &limits, deflate, move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        1 + (x as usize) % max_chunk
    });
    assert_eq!(whole, bytewise, "one piece vs one byte at a time");
    assert_eq!(whole, random, "one piece vs random chunks ({max_chunk})");
});

/// Feeds `wire` in chunks of the sizes `next_size` returns; returns the
/// events and the outcome, after checking the per-event invariants.
fn run(
    wire: &[u8],
    limits: &ReceiverLimits,
    deflate: bool,
    mut next_size: impl FnMut(usize) -> usize,
) -> (Vec<Ev>, Result<(), ProtocolError>) {
    let mut rx = Receiver::new();
    if deflate {
        rx.enable_deflate(Agreed {
            server_max_window_bits: 15,
            window_requested: false,
        });
    }
    let mut pool = PartialPool::new(2, 1024);
    let mut events = Vec::new();
    let mut result = Ok(());
    let mut rest = wire;
    let mut i = 0;
    while !rest.is_empty() {
        let n = next_size(i).clamp(1, rest.len());
        // The receiver unmasks in place, so each feed gets its own copy.
        let mut chunk = rest[..n].to_vec();
        rest = &rest[n..];
        i += 1;
        let closed_before = events.iter().any(|e| matches!(e, Ev::Close(..)));
        let done_before = rx.is_done();
        let r = rx.feed(&mut chunk, limits, &mut pool, &mut |e| {
            assert!(!done_before, "event after the stream ended: {e:?}");
            events.push(check_event(e, limits));
        });
        if closed_before || done_before {
            assert!(r.is_ok(), "input after the end is ignored, not an error");
        }
        if r.is_err() {
            assert!(rx.is_done(), "an error ends the stream");
            result = r;
            break;
        }
        if !rx.holds_buffer() {
            assert!(pool.pooled() <= 1, "buffers leak from the pool");
        }
    }
    let closes = events.iter().filter(|e| matches!(e, Ev::Close(..))).count();
    assert!(closes <= 1, "more than one close event");
    if closes == 1 {
        assert!(
            matches!(events.last(), Some(Ev::Close(..))),
            "event after close"
        );
        assert!(rx.is_done());
    }
    rx.release(&mut pool);
    assert!(!rx.holds_buffer());
    (events, result)
}

fn check_event(e: Event<'_>, limits: &ReceiverLimits) -> Ev {
    match e {
        Event::Message(kind, d) => {
            assert!(
                d.len() as u64 <= limits.max_message_bytes,
                "message over the limit"
            );
            match kind {
                MessageKind::Text => {
                    assert!(std::str::from_utf8(d).is_ok(), "text message is not UTF-8");
                    Ev::Text(d.to_vec())
                }
                MessageKind::Binary => Ev::Binary(d.to_vec()),
            }
        }
        Event::Ping(d) => {
            assert!(d.len() <= MAX_CONTROL_PAYLOAD);
            Ev::Ping(d.to_vec())
        }
        Event::Pong(d) => {
            assert!(d.len() <= MAX_CONTROL_PAYLOAD);
            Ev::Pong(d.to_vec())
        }
        Event::Close(c) => {
            assert!(c.reason.len() <= MAX_CONTROL_PAYLOAD - 2);
            if let Some(code) = c.code {
                assert!(code.is_valid_on_wire(), "close code {code} accepted");
            } else {
                assert!(c.reason.is_empty());
            }
            Ev::Close(c.code.map(|c| c.0), c.reason.to_string())
        }
    }
}
