//! A fan-out frame: one publish or broadcast, encoded once and shared (by
//! `Arc`) by every subscriber on every worker, plain and, when some
//! subscriber negotiated permessage-deflate, compressed.
//!
//! Owns "compress once per publish": the compressed variant is built lazily
//! by the first worker that has a deflate subscriber for it, exactly once
//! (a `OnceLock` in the shared frame), and then shared by all of them. A
//! publish no deflate subscriber receives is never compressed.

use std::sync::{Arc, OnceLock};

use crate::protocol::deflate::replies::write_compressed_frame;
use crate::protocol::deflate::Deflater;
use crate::protocol::frame::{encode_server_frame, server_header};
use crate::protocol::OpCode;

/// The window the shared compressed variant uses: peers that asked for a
/// smaller one (`server_max_window_bits` < 15) get the plain frame.
pub const SHARED_WINDOW_BITS: u8 = 15;

#[derive(Debug)]
pub struct OutFrame {
    opcode: OpCode,
    /// The whole frame as sent to peers without permessage-deflate.
    plain: Arc<[u8]>,
    /// Where the payload starts in `plain`.
    header_len: u8,
    /// The frame with RSV1 and a compressed payload; `None` inside when
    /// compressing was not worth it (small, or incompressible).
    deflated: OnceLock<Option<Arc<[u8]>>>,
}

impl OutFrame {
    pub fn new(opcode: OpCode, payload: &[u8]) -> Arc<OutFrame> {
        let (_, header_len) = server_header(opcode, payload.len());
        Arc::new(OutFrame {
            opcode,
            plain: encode_server_frame(opcode, payload).into(),
            header_len: header_len as u8,
            deflated: OnceLock::new(),
        })
    }

    /// A text frame.
    pub fn text(payload: &[u8]) -> Arc<OutFrame> {
        OutFrame::new(OpCode::Text, payload)
    }

    /// The uncompressed frame.
    pub fn plain(&self) -> &Arc<[u8]> {
        &self.plain
    }

    /// Builds the compressed variant if no worker has yet (runs the
    /// compressor at most once per frame, whoever calls).
    pub fn prepare_deflated(&self, deflater: &mut Deflater, min_size: usize) {
        self.deflated.get_or_init(|| {
            let payload = &self.plain[self.header_len as usize..];
            if payload.len() < min_size {
                return None;
            }
            let c = deflater.compress(payload, SHARED_WINDOW_BITS)?;
            let mut frame = Vec::new();
            write_compressed_frame(&mut frame, self.opcode, c);
            Some(frame.into())
        });
    }

    /// The frame for one subscriber: compressed when it negotiated
    /// permessage-deflate with the full window and [`Self::prepare_deflated`]
    /// made a compressed variant, else plain.
    pub fn for_peer(&self, deflate: bool) -> &Arc<[u8]> {
        match self.deflated.get() {
            Some(Some(c)) if deflate => c,
            _ => &self.plain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::deflate::Inflater;
    use crate::protocol::frame::{FrameHeader, Role};

    #[test]
    fn compresses_once_and_only_when_asked() {
        let text = "{\"type\":\"message\",\"payload\":\"abc\"} ".repeat(20);
        let f = OutFrame::text(text.as_bytes());
        let mut d = Deflater::default();
        // Nobody asked: plain for everyone, no compression ran.
        assert_eq!(f.for_peer(true), f.plain());
        assert_eq!(d.compressions(), 0);
        for _ in 0..1000 {
            f.prepare_deflated(&mut d, 128);
        }
        assert_eq!(d.compressions(), 1);
        assert!(Arc::ptr_eq(f.for_peer(true), f.for_peer(true)));
        assert_eq!(f.for_peer(false), f.plain());
        let c = f.for_peer(true);
        assert_eq!(c[0], 0xC1, "FIN + RSV1 + text");
        let (h, n) = FrameHeader::decode(c, Role::Client, 0x4).unwrap().unwrap();
        assert_eq!(n + h.payload_len as usize, c.len());
        let back = Inflater::new().inflate(&c[n..], 1 << 20).unwrap().to_vec();
        assert_eq!(back, text.as_bytes());
    }

    #[test]
    fn small_frames_stay_plain() {
        let f = OutFrame::text(b"{\"type\":\"pong\"}");
        let mut d = Deflater::default();
        f.prepare_deflated(&mut d, 128);
        assert_eq!(d.compressions(), 0);
        assert_eq!(f.for_peer(true), f.plain());
        assert_eq!(&f.plain()[..2], &[0x81, 15]);
    }
}
