//! Property tests of the sans-IO codec through the public API: frame headers
//! of every length class round-trip for both roles; messages cut into any
//! fragments, interleaved with control frames and delivered in any TCP
//! chunking reassemble exactly; text split at any byte (mid code point too)
//! validates, and invalid UTF-8 anywhere is refused with 1007.

mod common;

use common::pseudo_random;
use proptest::prelude::*;
use proptest::sample::Index;
use wsgate::protocol::close::CloseCode;
use wsgate::protocol::frame::{
    encode_server_frame, write_client_frame, FrameHeader, OpCode, Role, MAX_HEADER_LEN,
};
use wsgate::protocol::message::{
    OwnedEvent as Ev, PartialPool, ProtocolError, Receiver, ReceiverLimits,
};
use wsgate::protocol::utf8::Utf8Validator;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Feeds `wire` to a fresh receiver in chunks of the given sizes (cycled),
/// stopping at the first error.
fn feed_chunked(
    wire: &[u8],
    chunks: &[usize],
    limits: &ReceiverLimits,
) -> (Vec<Ev>, Result<(), ProtocolError>) {
    let mut rx = Receiver::new();
    let mut pool = PartialPool::default();
    let mut events = Vec::new();
    let mut rest = wire;
    let mut i = 0;
    while !rest.is_empty() {
        let n = chunks[i % chunks.len()].clamp(1, rest.len());
        let mut chunk = rest[..n].to_vec();
        rest = &rest[n..];
        i += 1;
        let r = rx.feed(&mut chunk, limits, &mut pool, &mut |e| {
            events.push(e.to_owned_event())
        });
        if r.is_err() {
            return (events, r);
        }
    }
    (events, Ok(()))
}

/// Cuts `len` bytes at the given points: the fragment boundaries, sorted,
/// duplicates kept (so empty fragments happen too).
fn cut_points(len: usize, cuts: &[Index]) -> Vec<usize> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(len + 1)).collect();
    points.sort_unstable();
    points
}

/// The pieces of `payload` between consecutive cut points.
fn fragments<'a>(payload: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(points.len() + 1);
    let mut start = 0;
    for &p in points {
        out.push(&payload[start..p]);
        start = p;
    }
    out.push(&payload[start..]);
    out
}

/// Appends `payload` as a fragmented message: the first frame carries the
/// message opcode, the rest are continuations, only the last has FIN.
/// `between(i)` may add frames after fragment `i` (not after the last one).
fn write_fragmented(
    wire: &mut Vec<u8>,
    op: OpCode,
    parts: &[&[u8]],
    mask: [u8; 4],
    fin_last: bool,
    mut between: impl FnMut(usize, &mut Vec<u8>),
) {
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let opcode = if i == 0 { op } else { OpCode::Continuation };
        write_client_frame(wire, last && fin_last, opcode, mask, part);
        if !last {
            between(i, wire);
        }
    }
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// Payload lengths from all three encodings, with their boundaries weighted in.
fn any_payload_len() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..=125u64,
        126..=65535u64,
        65536..=(1u64 << 63) - 1,
        prop::sample::select(vec![
            0u64,
            1,
            125,
            126,
            127,
            65535,
            65536,
            u32::MAX as u64,
            1 << 32,
            (1 << 63) - 1,
        ]),
    ]
}

/// Lengths a test can afford to materialise, again from all three classes.
fn small_payload_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        0..=125usize,
        126..=65535usize,
        65536..=70_000usize,
        prop::sample::select(vec![0usize, 125, 126, 127, 65535, 65536]),
    ]
}

fn data_opcode() -> impl Strategy<Value = OpCode> {
    prop::sample::select(vec![OpCode::Continuation, OpCode::Text, OpCode::Binary])
}

fn control_opcode() -> impl Strategy<Value = OpCode> {
    prop::sample::select(vec![OpCode::Close, OpCode::Ping, OpCode::Pong])
}

/// TCP read sizes: mostly small (to split headers), sometimes large.
fn tcp_chunks() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![3 => 1..16usize, 1 => 16..5000usize], 1..8)
}

/// A ping or pong with a payload of at most 125 bytes.
#[derive(Debug, Clone)]
struct Control {
    ping: bool,
    payload: Vec<u8>,
}

fn control_frame() -> impl Strategy<Value = Control> {
    (any::<bool>(), prop::collection::vec(any::<u8>(), 0..=125))
        .prop_map(|(ping, payload)| Control { ping, payload })
}

/// Appends a control frame and the event it must produce.
fn put_control(c: &Control, wire: &mut Vec<u8>, want: &mut Vec<Ev>) {
    let op = if c.ping { OpCode::Ping } else { OpCode::Pong };
    write_client_frame(wire, true, op, [1, 2, 3, 4], &c.payload);
    want.push(if c.ping {
        Ev::Ping(c.payload.clone())
    } else {
        Ev::Pong(c.payload.clone())
    });
}

/// One message to send: its content, where it is cut into fragments, which
/// control frames go between the fragments, and its masking key.
#[derive(Debug, Clone)]
struct Msg {
    text: bool,
    payload: Vec<u8>,
    cuts: Vec<Index>,
    controls: Vec<Option<Control>>,
    mask: [u8; 4],
}

fn message() -> impl Strategy<Value = Msg> {
    let content = prop_oneof![
        any::<String>().prop_map(|s| (true, s.into_bytes())),
        prop::collection::vec(any::<u8>(), 0..400).prop_map(|b| (false, b)),
    ];
    (
        content,
        prop::collection::vec(any::<Index>(), 0..6),
        prop::collection::vec(prop::option::weighted(0.4, control_frame()), 0..6),
        any::<[u8; 4]>(),
    )
        .prop_map(|((text, payload), cuts, controls, mask)| Msg {
            text,
            payload,
            cuts,
            controls,
            mask,
        })
}

/// Invalid UTF-8 sequences: a bad byte, a lone continuation, an overlong
/// encoding, a surrogate, a code point past U+10FFFF, a truncated sequence.
fn invalid_sequence() -> impl Strategy<Value = &'static [u8]> {
    prop::sample::select(vec![
        &b"\xff"[..],
        b"\xfe",
        b"\x80",
        b"\xbf",
        b"\xc0\xaf",
        b"\xc1\xbf",
        b"\xe0\x80\xaf",
        b"\xed\xa0\x80",
        b"\xed\xbf\xbf",
        b"\xf4\x90\x80\x80",
        b"\xf5\x80\x80\x80",
        b"\xe2\x82",
        b"\xf0\x9f\x98",
        b"\xc3",
    ])
}

/// `s` with `bad` inserted at a character boundary picked by `at`.
fn with_invalid(s: &str, at: Index, bad: &[u8]) -> Vec<u8> {
    let boundaries: Vec<usize> = s
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(s.len()))
        .collect();
    let pos = boundaries[at.index(boundaries.len())];
    let mut out = s.as_bytes()[..pos].to_vec();
    out.extend_from_slice(bad);
    out.extend_from_slice(&s.as_bytes()[pos..]);
    out
}

// ---------------------------------------------------------------------------
// Frame headers
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Data frame headers of every length class, masked (client to server)
    /// and unmasked (server to client), with any RSV bits an extension
    /// allows: decode(encode(h)) == h, the size is the minimal encoding, and
    /// every strict prefix is "incomplete".
    #[test]
    fn data_headers_round_trip(
        fin in any::<bool>(),
        rsv in 0u8..8,
        opcode in data_opcode(),
        payload_len in any_payload_len(),
        mask in any::<Option<[u8; 4]>>(),
    ) {
        let h = FrameHeader { fin, rsv, opcode, mask, payload_len };
        let mut buf = [0u8; MAX_HEADER_LEN];
        let n = h.encode(&mut buf);
        let len_bytes = match payload_len {
            0..=125 => 0,
            126..=65535 => 2,
            _ => 8,
        };
        prop_assert_eq!(n, 2 + len_bytes + if mask.is_some() { 4 } else { 0 });
        let role = if mask.is_some() { Role::Server } else { Role::Client };
        prop_assert_eq!(FrameHeader::decode(&buf[..n], role, rsv), Ok(Some((h, n))));
        // Trailing payload bytes do not change the header.
        let mut longer = buf[..n].to_vec();
        longer.extend_from_slice(&[0xAB; 20]);
        prop_assert_eq!(FrameHeader::decode(&longer, role, rsv), Ok(Some((h, n))));
        for cut in 0..n {
            prop_assert_eq!(FrameHeader::decode(&buf[..cut], role, rsv), Ok(None));
        }
        // The other role refuses it (masking is mandatory one way, forbidden
        // the other), and so does a peer without the extension for RSV bits.
        let other = if mask.is_some() { Role::Client } else { Role::Server };
        prop_assert!(FrameHeader::decode(&buf[..n], other, rsv).is_err());
        if rsv != 0 {
            prop_assert!(FrameHeader::decode(&buf[..n], role, 0).is_err());
        }
    }

    /// Control frames: final, at most 125 bytes, both roles.
    #[test]
    fn control_headers_round_trip(
        opcode in control_opcode(),
        payload_len in 0u64..=125,
        mask in any::<Option<[u8; 4]>>(),
    ) {
        let h = FrameHeader { fin: true, rsv: 0, opcode, mask, payload_len };
        let mut buf = [0u8; MAX_HEADER_LEN];
        let n = h.encode(&mut buf);
        let role = if mask.is_some() { Role::Server } else { Role::Client };
        prop_assert_eq!(FrameHeader::decode(&buf[..n], role, 0), Ok(Some((h, n))));
        // Not final: refused.
        let mut frag = buf;
        frag[0] &= 0x7F;
        prop_assert!(FrameHeader::decode(&frag[..n], role, 0).is_err());
    }
}

// ---------------------------------------------------------------------------
// Whole frames through the receiver (server role) and server frames
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A binary or text frame of any length class, masked with any key and
    /// read in any chunking, arrives intact; a server frame of the same
    /// payload decodes (client role) to the same bytes.
    #[test]
    fn frames_of_every_length_class_round_trip(
        len in small_payload_len(),
        seed in any::<u64>(),
        mask in any::<[u8; 4]>(),
        chunks in tcp_chunks(),
        text in any::<bool>(),
    ) {
        let mut payload = pseudo_random(seed, len);
        if text {
            payload.iter_mut().for_each(|b| *b &= 0x7F); // ASCII
        }
        let op = if text { OpCode::Text } else { OpCode::Binary };
        let mut wire = Vec::new();
        write_client_frame(&mut wire, true, op, mask, &payload);
        let (events, r) = feed_chunked(&wire, &chunks, &ReceiverLimits::default());
        prop_assert_eq!(r, Ok(()));
        let want = if text {
            Ev::Text(String::from_utf8(payload.clone()).unwrap())
        } else {
            Ev::Binary(payload.clone())
        };
        prop_assert_eq!(events, vec![want]);

        let server = encode_server_frame(op, &payload);
        let (h, n) = FrameHeader::decode(&server, Role::Client, 0).unwrap().unwrap();
        prop_assert!(h.fin && h.mask.is_none() && h.opcode == op);
        prop_assert_eq!(h.payload_len, len as u64);
        prop_assert_eq!(&server[n..], &payload[..]);
    }
}

// ---------------------------------------------------------------------------
// Fragmentation, interleaved control frames, TCP chunking
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any sequence of messages, each cut into arbitrary fragments (empty
    /// ones included, text cut mid code point) with pings and pongs between
    /// the fragments, then a close frame, all read in any TCP chunking:
    /// the receiver reports exactly the control frames in order, each
    /// message whole when its last fragment arrives, then the close.
    #[test]
    fn fragmented_messages_reassemble_exactly(
        msgs in prop::collection::vec(message(), 1..5),
        leading in prop::option::of(control_frame()),
        close_reason in "[a-zé ]{0,20}",
        chunks in tcp_chunks(),
    ) {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        if let Some(c) = &leading {
            put_control(c, &mut wire, &mut want);
        }
        for m in &msgs {
            let points = cut_points(m.payload.len(), &m.cuts);
            let parts = fragments(&m.payload, &points);
            let op = if m.text { OpCode::Text } else { OpCode::Binary };
            write_fragmented(&mut wire, op, &parts, m.mask, true, |i, wire| {
                if let Some(Some(c)) = m.controls.get(i) {
                    put_control(c, wire, &mut want);
                }
            });
            want.push(if m.text {
                Ev::Text(String::from_utf8(m.payload.clone()).unwrap())
            } else {
                Ev::Binary(m.payload.clone())
            });
        }
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend_from_slice(close_reason.as_bytes());
        write_client_frame(&mut wire, true, OpCode::Close, [9, 9, 9, 9], &close);
        want.push(Ev::Close(Some(1000), close_reason.clone()));
        // Anything after the close frame is ignored.
        write_client_frame(&mut wire, true, OpCode::Text, [0; 4], b"ignored");

        let (events, r) = feed_chunked(&wire, &chunks, &ReceiverLimits::default());
        prop_assert_eq!(r, Ok(()));
        prop_assert_eq!(events, want);
    }
}

// ---------------------------------------------------------------------------
// UTF-8
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Valid text split at arbitrary byte positions validates, fed straight
    /// to the incremental validator.
    #[test]
    fn valid_text_split_anywhere_validates(s in any::<String>(), cuts in prop::collection::vec(any::<Index>(), 0..10)) {
        let points = cut_points(s.len(), &cuts);
        let mut v = Utf8Validator::new();
        for part in fragments(s.as_bytes(), &points) {
            prop_assert!(v.feed(part).is_ok());
        }
        prop_assert!(v.finish().is_ok());
    }

    /// For arbitrary bytes cut anywhere, the validator agrees with
    /// `std::str::from_utf8`, and so does the receiver: a text message of
    /// those bytes in those fragments is delivered iff it is UTF-8, else
    /// refused with 1007.
    #[test]
    fn arbitrary_bytes_validate_like_std(
        bytes in prop::collection::vec(prop_oneof![any::<u8>(), 0x80u8..0xC0], 0..64),
        cuts in prop::collection::vec(any::<Index>(), 0..6),
        chunks in tcp_chunks(),
    ) {
        let valid = std::str::from_utf8(&bytes).is_ok();
        let points = cut_points(bytes.len(), &cuts);
        let parts = fragments(&bytes, &points);
        let mut v = Utf8Validator::new();
        let streamed = parts.iter().try_for_each(|p| v.feed(p)).and_then(|_| v.finish());
        prop_assert_eq!(streamed.is_ok(), valid);

        let mut wire = Vec::new();
        write_fragmented(&mut wire, OpCode::Text, &parts, [7, 7, 1, 0], true, |_, _| {});
        let (events, r) = feed_chunked(&wire, &chunks, &ReceiverLimits::default());
        if valid {
            prop_assert_eq!(r, Ok(()));
            prop_assert_eq!(events, vec![Ev::Text(String::from_utf8(bytes).unwrap())]);
        } else {
            prop_assert!(events.is_empty());
            prop_assert_eq!(r, Err(ProtocolError::InvalidUtf8));
            prop_assert_eq!(r.unwrap_err().close_code(), CloseCode::INVALID_PAYLOAD);
        }
    }

    /// An invalid sequence anywhere in a text message, however the message
    /// is fragmented and chunked, is refused with 1007 — and without waiting
    /// for the final fragment when bytes after the bad sequence have arrived.
    #[test]
    fn invalid_utf8_anywhere_is_rejected_with_1007(
        s in any::<String>(),
        at in any::<Index>(),
        bad in invalid_sequence(),
        cuts in prop::collection::vec(any::<Index>(), 0..6),
        chunks in tcp_chunks(),
        with_fin in any::<bool>(),
    ) {
        let mut bytes = with_invalid(&s, at, bad);
        // Something always follows the bad sequence, so even a truncated
        // sequence is provably invalid before the message ends.
        bytes.push(b'.');
        prop_assert!(std::str::from_utf8(&bytes).is_err());
        let points = cut_points(bytes.len(), &cuts);
        let parts = fragments(&bytes, &points);
        let mut wire = Vec::new();
        write_fragmented(&mut wire, OpCode::Text, &parts, [0xde, 0xad, 0xbe, 0xef], with_fin, |_, _| {});
        let (events, r) = feed_chunked(&wire, &chunks, &ReceiverLimits::default());
        prop_assert!(events.is_empty(), "{:?}", events);
        prop_assert_eq!(r, Err(ProtocolError::InvalidUtf8));
        prop_assert_eq!(r.unwrap_err().close_code(), CloseCode(1007));

        // The same bytes as a close reason (when they fit) are refused with 1007 too.
        if bytes.len() <= 123 {
            let mut close = 1000u16.to_be_bytes().to_vec();
            close.extend_from_slice(&bytes);
            let mut wire = Vec::new();
            write_client_frame(&mut wire, true, OpCode::Close, [5, 6, 7, 8], &close);
            let (events, r) = feed_chunked(&wire, &chunks, &ReceiverLimits::default());
            prop_assert!(events.is_empty());
            prop_assert_eq!(r, Err(ProtocolError::BadClose(CloseCode::INVALID_PAYLOAD)));
            prop_assert_eq!(r.unwrap_err().close_code().0, 1007);
        }
    }
}
