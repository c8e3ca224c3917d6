//! Per-message DEFLATE (RFC 7692 §7.2) without context takeover: one
//! [`Deflater`] and one [`Inflater`] per worker, reset for every message, so
//! no connection owns compression state.
//!
//! Owns the message transform: raw DEFLATE (no zlib header), `Z_SYNC_FLUSH`
//! at the end of a message with its empty-block tail `00 00 ff ff` removed
//! on send (§7.2.1) and appended again on receive (§7.2.2), and the
//! inflated-size limit, enforced while inflating: a small message that
//! inflates past the limit is stopped there, using at most the limit (plus
//! one byte) of memory. DEFLATE itself is the `flate2` crate (zlib-rs
//! backend). Pure code over byte slices: no IO, no clocks.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The empty stored block a sync flush ends with (RFC 7692 §7.2.1).
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Scratch buffers that grew past this for one big message are given back
/// before the next, so a burst of 16 MiB messages does not pin 16 MiB per
/// worker.
const KEEP_CAPACITY: usize = 64 * 1024;

/// The compression level. Level 6 (zlib's default) makes a ~1 KB JSON
/// message about 20 % smaller than level 1 for about 10 µs instead of 3 µs:
/// a fan-out message is compressed once for all its subscribers, so the
/// smaller frame is worth it.
pub const LEVEL: u32 = 6;

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    #[error("inflated message exceeds the size limit")]
    TooBig,
    #[error("compressed message is not valid DEFLATE data")]
    Corrupt,
}

/// One worker's compressor: one zlib-rs stream per window size a client
/// asked for (created on first use), reset per message.
pub struct Deflater {
    level: Compression,
    /// Index `bits - 9`: windows 9..=15 (zlib cannot make 8-bit raw windows).
    by_window: [Option<Box<Compress>>; 7],
    buf: Vec<u8>,
    /// Messages run through the compressor (for metrics).
    compressions: u64,
}

impl Default for Deflater {
    fn default() -> Self {
        Deflater::new(LEVEL)
    }
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater")
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

impl Deflater {
    pub fn new(level: u32) -> Self {
        Deflater {
            level: Compression::new(level.min(9)),
            by_window: Default::default(),
            buf: Vec::new(),
            compressions: 0,
        }
    }

    /// How many messages this deflater has compressed.
    pub fn compressions(&self) -> u64 {
        self.compressions
    }

    /// Compresses one message payload for a peer whose messages may use a
    /// window of `window_bits` (RFC 7692 §7.1.2.1). Returns the compressed
    /// payload (tail removed), or `None` when sending it uncompressed is the
    /// better choice: it would not get smaller, or the window is one zlib
    /// cannot produce (8 bits).
    pub fn compress(&mut self, payload: &[u8], window_bits: u8) -> Option<&[u8]> {
        if !(9..=15).contains(&window_bits) {
            return None;
        }
        self.compressions += 1;
        let level = self.level;
        let z = self.by_window[(window_bits - 9) as usize].get_or_insert_with(|| {
            Box::new(Compress::new_with_window_bits(level, false, window_bits))
        });
        z.reset();
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
        self.buf.clear();
        // Worth sending only if smaller than the payload; stop once the
        // output (with its tail) grows past that.
        let worth = payload.len() + TAIL.len();
        self.buf.reserve(worth.clamp(64, KEEP_CAPACITY));
        let mut pos = 0;
        loop {
            if self.buf.len() == self.buf.capacity() {
                if self.buf.len() >= worth {
                    return None;
                }
                self.buf
                    .reserve(self.buf.len().min(worth - self.buf.len()).max(64));
            }
            let before_in = z.total_in();
            let before_out = z.total_out();
            let status = z
                .compress_vec(&payload[pos..], &mut self.buf, FlushCompress::Sync)
                .ok()?;
            pos += (z.total_in() - before_in) as usize;
            let progressed = z.total_in() != before_in || z.total_out() != before_out;
            // A sync flush is complete when the input is used up and the
            // output still had room.
            if pos == payload.len() && self.buf.len() < self.buf.capacity() {
                break;
            }
            if !progressed && status != Status::Ok {
                return None;
            }
        }
        if !self.buf.ends_with(&TAIL) || self.buf.len() >= worth {
            return None;
        }
        self.buf.truncate(self.buf.len() - TAIL.len());
        Some(&self.buf)
    }
}

/// One worker's decompressor (full 15-bit window, which inflates whatever
/// window the client used), reset per message.
pub struct Inflater {
    z: Decompress,
    out: Vec<u8>,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater::new()
    }
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("capacity", &self.out.capacity())
            .finish_non_exhaustive()
    }
}

impl Inflater {
    pub fn new() -> Self {
        Inflater {
            z: Decompress::new_with_window_bits(false, 15),
            out: Vec::new(),
        }
    }

    /// Inflates one compressed message (its frames' payloads joined, tail
    /// not included). The output may be at most `limit` bytes: inflating
    /// stops as soon as it would exceed that, and the buffer never grows
    /// past `limit + 1` bytes, whatever the input claims.
    pub fn inflate(&mut self, payload: &[u8], limit: usize) -> Result<&[u8], InflateError> {
        self.z.reset(false);
        if self.out.capacity() > KEEP_CAPACITY {
            self.out = Vec::new();
        }
        self.out.clear();
        let cap = limit.saturating_add(1);
        let mut ended = false;
        for (piece, flush) in [
            (payload, FlushDecompress::None),
            (&TAIL[..], FlushDecompress::Sync),
        ] {
            let mut pos = 0;
            while !ended {
                if self.out.len() == self.out.capacity() {
                    let room = self.out.capacity().max(1024).min(cap - self.out.len());
                    if room == 0 {
                        return Err(InflateError::TooBig);
                    }
                    self.out.reserve_exact(room);
                }
                let before_in = self.z.total_in();
                let before_out = self.z.total_out();
                let status = self
                    .z
                    .decompress_vec(&piece[pos..], &mut self.out, flush)
                    .map_err(|_| InflateError::Corrupt)?;
                if self.out.len() > limit {
                    return Err(InflateError::TooBig);
                }
                pos += (self.z.total_in() - before_in) as usize;
                // A final block (BFINAL) ends the message's data early;
                // the tail after it is not DEFLATE data and is ignored.
                ended = status == Status::StreamEnd;
                if pos == piece.len() && self.out.len() < self.out.capacity() {
                    break;
                }
                let progressed = self.z.total_in() != before_in || self.z.total_out() != before_out;
                if !progressed && self.out.len() < self.out.capacity() {
                    return Err(InflateError::Corrupt);
                }
            }
        }
        Ok(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(payload: &[u8], bits: u8) {
        let mut d = Deflater::default();
        let mut i = Inflater::new();
        let c = d.compress(payload, bits).expect("compressible").to_vec();
        assert!(c.len() < payload.len());
        assert_eq!(i.inflate(&c, payload.len()).unwrap(), payload);
        // One byte less is over the limit.
        assert_eq!(i.inflate(&c, payload.len() - 1), Err(InflateError::TooBig));
    }

    #[test]
    fn round_trips_at_every_window() {
        let text: Vec<u8> = (0..20_000u32)
            .flat_map(|n| format!("{{\"n\":{},\"v\":\"abc\"}}", n % 977).into_bytes())
            .collect();
        for bits in 9..=15 {
            roundtrip(&text, bits);
            roundtrip(b"hello hello hello hello hello hello", bits);
        }
    }

    #[test]
    fn declines_what_would_not_shrink_and_8_bit_windows() {
        let mut d = Deflater::default();
        assert_eq!(d.compress(b"", 15), None);
        assert_eq!(d.compress(b"ab", 15), None);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        assert_eq!(d.compress(&noise, 15), None);
        assert_eq!(d.compress(&[b'a'; 1000], 8), None);
        assert!(d.compress(&[b'a'; 1000], 9).is_some());
    }

    #[test]
    fn the_tail_is_stripped_and_rfc_7692_examples_inflate() {
        let mut d = Deflater::default();
        let c = d.compress(&[b'x'; 100], 15).unwrap();
        assert!(!c.ends_with(&TAIL));
        let mut i = Inflater::new();
        // RFC 7692 §7.2.3.1: "Hello" compressed.
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(i.inflate(&hello, 100).unwrap(), b"Hello");
        // §7.2.3.3: "Hello" uncompressed in a stored block.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(i.inflate(&stored, 100).unwrap(), b"Hello");
        // §7.2.3.4: with BFINAL set.
        let fin = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(i.inflate(&fin, 100).unwrap(), b"Hello");
        // An empty message.
        assert_eq!(i.inflate(&[0x00], 100).unwrap(), b"");
    }

    #[test]
    fn a_bomb_stops_at_the_limit_without_growing_past_it() {
        // 16 MiB of zeros compresses to about 16 KiB.
        let zeros = vec![0u8; 16 << 20];
        let mut d = Deflater::default();
        let c = d.compress(&zeros, 15).unwrap().to_vec();
        assert!(c.len() < 20 << 10, "{}", c.len());
        let mut i = Inflater::new();
        assert_eq!(i.inflate(&c, 1 << 20), Err(InflateError::TooBig));
        assert!(i.out.capacity() <= (1 << 20) + 1, "{}", i.out.capacity());
        // And the buffer is given back before the next message.
        assert_eq!(
            i.inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 10)
                .unwrap(),
            b"Hello"
        );
        assert!(i.out.capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        let mut i = Inflater::new();
        assert_eq!(i.inflate(&[0xff; 64], 1000), Err(InflateError::Corrupt));
        // Every short input either inflates or errors.
        for a in 0..=255u8 {
            for b in [0u8, 1, 0x7f, 0xff] {
                let _ = i.inflate(&[a, b, a ^ b], 1 << 16);
            }
        }
    }
}
