//! Arbitrary bytes as a frame header, decoded for both roles.
//!
//! Besides "no panic": a decoded header obeys every structural rule of RFC
//! 6455 §5.2 (so the message layer can rely on them), encodes back to exactly
//! the bytes it was decoded from (lengths are minimal, so the encoding is
//! unique), and every strict prefix of it is "incomplete", never an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::protocol::frame::{FrameError, FrameHeader, Role, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    // The last byte (when there is room for a header before it) picks which
    // RSV bits a hypothetical extension allows; usually none.
    let allowed_rsv = if data.len() > MAX_HEADER_LEN {
        data[data.len() - 1] & 0x7
    } else {
        0
    };
    for role in [Role::Server, Role::Client] {
        check(data, role, 0);
        if allowed_rsv != 0 {
            check(data, role, allowed_rsv);
        }
    }
});

fn check(data: &[u8], role: Role, allowed_rsv: u8) {
    match FrameHeader::decode(data, role, allowed_rsv) {
        Ok(Some((h, n))) => {
            assert!((2..=MAX_HEADER_LEN).contains(&n) && n <= data.len());
            assert_eq!(h.rsv & !allowed_rsv, 0, "disallowed RSV bits accepted");
            assert_eq!(h.mask.is_some(), role == Role::Server, "mask rule");
            assert!(h.payload_len >> 63 == 0);
            if h.opcode.is_control() {
                assert!(h.fin, "fragmented control frame accepted");
                assert!(h.payload_len <= MAX_CONTROL_PAYLOAD as u64);
            }
            let mut buf = [0u8; MAX_HEADER_LEN];
            let m = h.encode(&mut buf);
            assert_eq!(&buf[..m], &data[..n], "{h:?} re-encodes differently");
            for cut in 0..n {
                assert_eq!(
                    FrameHeader::decode(&data[..cut], role, allowed_rsv),
                    Ok(None),
                    "prefix {cut} of a valid header"
                );
            }
        }
        Ok(None) => assert!(data.len() < MAX_HEADER_LEN, "14 bytes always decide"),
        Err(e) => {
            // An error never depends on bytes after the header: the same
            // error comes from the shortest prefix that shows it.
            let again =
                FrameHeader::decode(&data[..data.len().min(MAX_HEADER_LEN)], role, allowed_rsv);
            assert_eq!(again, Err(e));
            if let FrameError::ReservedOpcode(op) = e {
                assert!((3..=7).contains(&op) || (0xB..=0xF).contains(&op));
            }
        }
    }
}
