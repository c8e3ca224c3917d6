//! Close codes and close-frame payload rules (RFC 6455 §5.5.1, §7.4).
//!
//! Owns the meaning of close codes and the validation of a received close
//! payload. The close *handshake timing* (flush, then close TCP; give up after
//! a timeout) belongs to the event loop, which calls in here for the rules.

use std::fmt;

/// A WebSocket close status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    pub const NORMAL: CloseCode = CloseCode(1000);
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);

    /// Whether a peer may send this code in a close frame.
    ///
    /// 1000-1003 and 1007-1011 are defined by RFC 6455; 1012-1014 were
    /// registered with IANA later (service restart, try again later, bad
    /// gateway). 1004-1006 and 1015 are reserved and must never appear on the
    /// wire; 3000-4999 are for libraries and applications.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A parsed close payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    pub code: Option<CloseCode>,
    pub reason: &'a str,
}

impl<'a> CloseFrame<'a> {
    /// Validates a received close payload.
    ///
    /// An empty payload is a close without a code. One byte, a code that may
    /// not appear on the wire, or a reason that is not UTF-8 is an error, and
    /// the returned code is the one to close with.
    pub fn parse(payload: &'a [u8]) -> Result<CloseFrame<'a>, CloseCode> {
        match payload.len() {
            0 => Ok(CloseFrame {
                code: None,
                reason: "",
            }),
            1 => Err(CloseCode::PROTOCOL_ERROR),
            _ => {
                let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
                if !code.is_valid_on_wire() {
                    return Err(CloseCode::PROTOCOL_ERROR);
                }
                let reason =
                    std::str::from_utf8(&payload[2..]).map_err(|_| CloseCode::INVALID_PAYLOAD)?;
                Ok(CloseFrame {
                    code: Some(code),
                    reason,
                })
            }
        }
    }

    /// The code to answer this close with: the peer's own code echoed back,
    /// or 1000 when it sent none (§5.5.1).
    pub fn reply_code(&self) -> CloseCode {
        self.code.unwrap_or(CloseCode::NORMAL)
    }
}

/// Builds a close payload: the code in network order and a reason truncated
/// at a character boundary so the control frame stays ≤ 125 bytes.
pub fn close_payload(code: CloseCode, reason: &str) -> ([u8; 125], usize) {
    let mut buf = [0u8; 125];
    buf[..2].copy_from_slice(&code.0.to_be_bytes());
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    buf[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    (buf, 2 + end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut v = code.to_be_bytes().to_vec();
        v.extend_from_slice(reason);
        v
    }

    #[test]
    fn valid_codes() {
        for c in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            let p = payload(c, b"bye");
            let f = CloseFrame::parse(&p).unwrap();
            assert_eq!(f.code, Some(CloseCode(c)));
            assert_eq!(f.reason, "bye");
            assert_eq!(f.reply_code(), CloseCode(c));
        }
    }

    #[test]
    fn invalid_codes_are_protocol_errors() {
        for c in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert_eq!(
                CloseFrame::parse(&payload(c, b"")),
                Err(CloseCode::PROTOCOL_ERROR),
                "{c}"
            );
        }
    }

    #[test]
    fn empty_one_byte_and_bad_reason() {
        assert_eq!(
            CloseFrame::parse(&[]).unwrap().reply_code(),
            CloseCode::NORMAL
        );
        assert_eq!(CloseFrame::parse(&[0x03]), Err(CloseCode::PROTOCOL_ERROR));
        assert_eq!(
            CloseFrame::parse(&payload(1000, b"\xce\xba\xed\xa0\x80")),
            Err(CloseCode::INVALID_PAYLOAD)
        );
    }

    #[test]
    fn close_payload_truncates_on_char_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let (buf, n) = close_payload(CloseCode::GOING_AWAY, &long);
        assert!(n <= 125);
        let f = CloseFrame::parse(&buf[..n]).unwrap();
        assert_eq!(f.code, Some(CloseCode::GOING_AWAY));
        assert!(long.starts_with(f.reason));
    }
}
