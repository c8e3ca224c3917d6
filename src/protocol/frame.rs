//! The frame codec (RFC 6455 §5.2): header decoding with every structural
//! check the RFC makes, and header/frame encoding.
//!
//! Owns only the wire format of one frame header. Message-level rules
//! (continuation order, UTF-8, message size) live in [`super::message`]; this
//! module must not keep state between frames.

use super::mask::apply_mask;

/// The longest possible header: 2 + 8 (64-bit length) + 4 (mask key).
pub const MAX_HEADER_LEN: usize = 14;
/// Control frames carry at most 125 bytes (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Frame opcodes (§5.2). Reserved values are rejected at decode time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    pub fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Structural errors in a frame header. Each maps to a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("client frame is not masked")]
    Unmasked,
    #[error("server frame is masked")]
    UnexpectedMask,
    #[error("control frame longer than 125 bytes")]
    ControlTooLong,
    #[error("fragmented control frame")]
    ControlFragmented,
    #[error("payload length not minimally encoded")]
    NonMinimalLength,
    #[error("64-bit payload length has its most significant bit set")]
    LengthOverflow,
}

/// Which side's frames are being decoded: servers demand masked frames,
/// clients demand unmasked ones (§5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1..RSV3 as the three low bits.
    pub rsv: u8,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

impl FrameHeader {
    /// Decodes a header from the start of `buf`.
    ///
    /// Returns `Ok(None)` if `buf` does not yet hold the whole header, else the
    /// header and its encoded length. `allowed_rsv` holds the RSV bits that a
    /// negotiated extension permits (0 when none is negotiated).
    pub fn decode(
        buf: &[u8],
        role: Role,
        allowed_rsv: u8,
    ) -> Result<Option<(FrameHeader, usize)>, FrameError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let b0 = buf[0];
        let b1 = buf[1];
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0x7;
        if rsv & !allowed_rsv != 0 {
            return Err(FrameError::ReservedBits);
        }
        let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(FrameError::ReservedOpcode(b0 & 0x0F))?;
        let masked = b1 & 0x80 != 0;
        match (role, masked) {
            (Role::Server, false) => return Err(FrameError::Unmasked),
            (Role::Client, true) => return Err(FrameError::UnexpectedMask),
            _ => {}
        }
        let len7 = b1 & 0x7F;
        if opcode.is_control() {
            if !fin {
                return Err(FrameError::ControlFragmented);
            }
            if len7 > 125 {
                return Err(FrameError::ControlTooLong);
            }
        }
        let (payload_len, mut pos) = match len7 {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                let n = u16::from_be_bytes([buf[2], buf[3]]) as u64;
                if n < 126 {
                    return Err(FrameError::NonMinimalLength);
                }
                (n, 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                let n = u64::from_be_bytes(b);
                if n >> 63 != 0 {
                    return Err(FrameError::LengthOverflow);
                }
                if n <= u16::MAX as u64 {
                    return Err(FrameError::NonMinimalLength);
                }
                (n, 10)
            }
            n => (n as u64, 2),
        };
        let mask = if masked {
            if buf.len() < pos + 4 {
                return Ok(None);
            }
            let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
            pos += 4;
            Some(m)
        } else {
            None
        };
        Ok(Some((
            FrameHeader {
                fin,
                rsv,
                opcode,
                mask,
                payload_len,
            },
            pos,
        )))
    }

    /// Encodes this header into `dst`, returning the number of bytes written.
    pub fn encode(&self, dst: &mut [u8; MAX_HEADER_LEN]) -> usize {
        dst[0] = (self.fin as u8) << 7 | (self.rsv & 0x7) << 4 | self.opcode as u8;
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut pos = match self.payload_len {
            n if n < 126 => {
                dst[1] = mask_bit | n as u8;
                2
            }
            n if n <= u16::MAX as u64 => {
                dst[1] = mask_bit | 126;
                dst[2..4].copy_from_slice(&(n as u16).to_be_bytes());
                4
            }
            n => {
                dst[1] = mask_bit | 127;
                dst[2..10].copy_from_slice(&n.to_be_bytes());
                10
            }
        };
        if let Some(m) = self.mask {
            dst[pos..pos + 4].copy_from_slice(&m);
            pos += 4;
        }
        pos
    }
}

/// The header of an unmasked, final server frame.
pub fn server_header(opcode: OpCode, payload_len: usize) -> ([u8; MAX_HEADER_LEN], usize) {
    let mut buf = [0u8; MAX_HEADER_LEN];
    let n = FrameHeader {
        fin: true,
        rsv: 0,
        opcode,
        mask: None,
        payload_len: payload_len as u64,
    }
    .encode(&mut buf);
    (buf, n)
}

/// Appends a complete unmasked, final server frame to `out`.
pub fn write_server_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let (hdr, n) = server_header(opcode, payload.len());
    out.reserve(n + payload.len());
    out.extend_from_slice(&hdr[..n]);
    out.extend_from_slice(payload);
}

/// Encodes a complete server frame into a new buffer (used once per publish
/// for encode-once fan-out).
pub fn encode_server_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_HEADER_LEN + payload.len());
    write_server_frame(&mut out, opcode, payload);
    out
}

/// Appends a masked client frame to `out` (for load generators and tests).
pub fn write_client_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: OpCode,
    mask: [u8; 4],
    payload: &[u8],
) {
    let mut hdr = [0u8; MAX_HEADER_LEN];
    let n = FrameHeader {
        fin,
        rsv: 0,
        opcode,
        mask: Some(mask),
        payload_len: payload.len() as u64,
    }
    .encode(&mut hdr);
    out.extend_from_slice(&hdr[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, FrameError> {
        FrameHeader::decode(buf, Role::Server, 0)
    }

    #[test]
    fn round_trips_every_length_class() {
        for len in [0u64, 1, 125, 126, 127, 65535, 65536, 1 << 32, (1 << 63) - 1] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let h = FrameHeader {
                    fin: len % 2 == 0,
                    rsv: 0,
                    opcode: OpCode::Binary,
                    mask,
                    payload_len: len,
                };
                let mut buf = [0u8; MAX_HEADER_LEN];
                let n = h.encode(&mut buf);
                let role = if mask.is_some() {
                    Role::Server
                } else {
                    Role::Client
                };
                let (back, used) = FrameHeader::decode(&buf[..n], role, 0).unwrap().unwrap();
                assert_eq!((back, used), (h, n));
                // Every strict prefix is "incomplete", never an error.
                for cut in 0..n {
                    assert_eq!(FrameHeader::decode(&buf[..cut], role, 0), Ok(None));
                }
            }
        }
    }

    #[test]
    fn length_encodings_are_minimal() {
        assert_eq!(
            dec(&[0x82, 0x80 | 126, 0, 125, 0, 0, 0, 0]),
            Err(FrameError::NonMinimalLength)
        );
        assert!(dec(&[0x82, 0x80 | 126, 0, 126, 0, 0, 0, 0])
            .unwrap()
            .is_some());
        let mut b = vec![0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 1, 2, 3, 4];
        assert_eq!(dec(&b), Err(FrameError::NonMinimalLength));
        b[7] = 1; // 0x1_FFFF
        assert_eq!(dec(&b).unwrap().unwrap().0.payload_len, 0x1_FFFF);
    }

    #[test]
    fn rejects_2_pow_63_lengths() {
        let b = [0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(dec(&b), Err(FrameError::LengthOverflow));
    }

    #[test]
    fn structural_rules() {
        // Unmasked client frame.
        assert_eq!(dec(&[0x81, 0x05]), Err(FrameError::Unmasked));
        // Masked server frame seen by a client.
        assert_eq!(
            FrameHeader::decode(&[0x81, 0x85], Role::Client, 0),
            Err(FrameError::UnexpectedMask)
        );
        // RSV1..3 without an extension.
        for rsv in [0x40u8, 0x20, 0x10, 0x70] {
            assert_eq!(dec(&[0x81 | rsv, 0x80]), Err(FrameError::ReservedBits));
        }
        // ...but allowed when negotiated.
        assert!(
            FrameHeader::decode(&[0xC1, 0x80, 0, 0, 0, 0], Role::Server, 0x4)
                .unwrap()
                .is_some()
        );
        // Reserved opcodes 3-7 and B-F.
        for op in (3u8..=7).chain(0xB..=0xF) {
            assert_eq!(dec(&[0x80 | op, 0x80]), Err(FrameError::ReservedOpcode(op)));
        }
        // Control frames: unfragmented and ≤ 125 bytes.
        assert_eq!(dec(&[0x09, 0x80]), Err(FrameError::ControlFragmented));
        assert_eq!(
            dec(&[0x89, 0x80 | 126, 0, 126]),
            Err(FrameError::ControlTooLong)
        );
        assert!(dec(&[0x89, 0x80 | 125, 1, 2, 3, 4]).unwrap().is_some());
    }

    #[test]
    fn server_frames_are_unmasked_and_final() {
        let f = encode_server_frame(OpCode::Text, b"hi");
        assert_eq!(f, [0x81, 0x02, b'h', b'i']);
        let big = encode_server_frame(OpCode::Binary, &[0u8; 300]);
        assert_eq!(&big[..4], &[0x82, 126, 0x01, 0x2C]);
        assert_eq!(big.len(), 304);
    }

    #[test]
    fn client_frames_are_masked() {
        let mut out = Vec::new();
        write_client_frame(&mut out, true, OpCode::Text, [1, 2, 3, 4], b"abcd");
        assert_eq!(out[1], 0x80 | 4);
        assert_eq!(&out[2..6], &[1, 2, 3, 4]);
        assert_eq!(&out[6..], &[b'a' ^ 1, b'b' ^ 2, b'c' ^ 3, b'd' ^ 4]);
    }
}
