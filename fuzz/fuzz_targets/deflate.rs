//! permessage-deflate: arbitrary `Sec-WebSocket-Extensions` values through
//! the offer parser, and arbitrary compressed payloads through the inflater.
//!
//! Input layout: [0] selects the part (even: negotiation, odd: codec),
//! [1] the inflate limit (×64 bytes) and the window of the round trip,
//! then the header value or the payload.
//! Negotiation never fails, only declines; an accepted window is 8..=15.
//! Inflating never exceeds the limit, and whatever the deflater makes
//! inflates back to the original.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::protocol::deflate::{negotiate, Deflater, Inflater};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let rest = &data[2..];
    if data[0] % 2 == 0 {
        let text = String::from_utf8_lossy(rest);
        if let Some(a) = negotiate(text.split('\n')) {
            assert!((8..=15).contains(&a.server_max_window_bits));
        }
        return;
    }
    let limit = data[1] as usize * 64;
    let mut inflater = Inflater::new();
    if let Ok(out) = inflater.inflate(rest, limit) {
        assert!(out.len() <= limit, "inflated past the limit");
    }
    let bits = 9 + data[1] % 7;
    let mut deflater = Deflater::default();
    if let Some(c) = deflater.compress(rest, bits) {
        let c = c.to_vec();
        assert!(c.len() < rest.len() + 4);
        let back = inflater.inflate(&c, rest.len()).expect("our own output inflates");
        assert_eq!(back, rest);
    }
});
