//! Where one connection's replies go: the worker's output buffer, each data
//! message compressed on its own (RSV1 set) when the connection negotiated
//! permessage-deflate and compressing is worth it.
//!
//! Owns the per-message choice "compressed or plain" for direct replies
//! (echo, command answers). Fan-out frames are compressed once per publish
//! elsewhere ([`crate::pubsub::frame`]); control frames are never
//! compressed (RFC 7692 §6.1).

use super::codec::Deflater;
use crate::protocol::frame::{write_server_frame, FrameHeader, MAX_HEADER_LEN};
use crate::protocol::OpCode;

/// The compression side of [`Replies`].
pub struct ReplyDeflate<'a> {
    pub deflater: &'a mut Deflater,
    /// The window the peer allows (RFC 7692 §7.1.2.1).
    pub window_bits: u8,
    /// Smaller messages go uncompressed.
    pub min_size: usize,
}

pub struct Replies<'a> {
    out: &'a mut Vec<u8>,
    deflate: Option<ReplyDeflate<'a>>,
    /// Data messages appended so far (for the `messages_out` count).
    messages: u64,
}

impl<'a> Replies<'a> {
    pub fn new(out: &'a mut Vec<u8>, deflate: Option<ReplyDeflate<'a>>) -> Self {
        Replies {
            out,
            deflate,
            messages: 0,
        }
    }

    /// Data messages appended so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Appends one complete data message (text or binary).
    pub fn message(&mut self, opcode: OpCode, payload: &[u8]) {
        self.messages += 1;
        if let Some(d) = self.deflate.as_mut() {
            if payload.len() >= d.min_size {
                if let Some(c) = d.deflater.compress(payload, d.window_bits) {
                    write_compressed_frame(self.out, opcode, c);
                    return;
                }
            }
        }
        write_server_frame(self.out, opcode, payload);
    }

    /// The raw output buffer, for control frames.
    pub fn out(&mut self) -> &mut Vec<u8> {
        self.out
    }
}

/// Appends a final server frame with RSV1 set (a compressed message).
pub fn write_compressed_frame(out: &mut Vec<u8>, opcode: OpCode, compressed: &[u8]) {
    let mut hdr = [0u8; MAX_HEADER_LEN];
    let n = FrameHeader {
        fin: true,
        rsv: 0x4,
        opcode,
        mask: None,
        payload_len: compressed.len() as u64,
    }
    .encode(&mut hdr);
    out.reserve(n + compressed.len());
    out.extend_from_slice(&hdr[..n]);
    out.extend_from_slice(compressed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::deflate::Inflater;

    #[test]
    fn compresses_large_messages_only() {
        let mut out = Vec::new();
        let mut deflater = Deflater::default();
        let mut r = Replies::new(
            &mut out,
            Some(ReplyDeflate {
                deflater: &mut deflater,
                window_bits: 15,
                min_size: 100,
            }),
        );
        r.message(OpCode::Text, b"short short short short short");
        let big = "abcabcabc".repeat(30);
        r.message(OpCode::Text, big.as_bytes());
        // Short: plain.
        assert_eq!(out[0], 0x81);
        let rest = &out[2 + 29..];
        // Long: RSV1, FIN, text; payload inflates back.
        assert_eq!(rest[0], 0xC1);
        let len = rest[1] as usize;
        assert!(len < 126);
        let back = Inflater::new()
            .inflate(&rest[2..2 + len], 1000)
            .unwrap()
            .to_vec();
        assert_eq!(back, big.as_bytes());
    }

    #[test]
    fn without_deflate_everything_is_plain() {
        let mut out = Vec::new();
        Replies::new(&mut out, None).message(OpCode::Binary, &[0; 300]);
        assert_eq!(&out[..4], &[0x82, 126, 0x01, 0x2C]);
    }
}
