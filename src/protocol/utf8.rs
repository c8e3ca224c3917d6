//! Incremental UTF-8 validation across reads and fragments (RFC 6455 §8.1).
//!
//! Owns at most three bytes of an unfinished code point. It fails as soon as
//! the bytes seen so far cannot begin valid UTF-8 ("fail fast"), not at the end
//! of the message, which is what Autobahn 6.4.* checks. The scan itself is
//! `std::str::from_utf8`, which is SIMD-accelerated and exact about which
//! prefixes are still completable.

/// The text seen so far is not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid UTF-8 in text message")]
pub struct InvalidUtf8;

/// Validates a byte stream chunk by chunk.
#[derive(Debug, Default, Clone, Copy)]
pub struct Utf8Validator {
    pending: [u8; 4],
    pending_len: u8,
}

/// Width of a UTF-8 sequence from its lead byte (only called on lead bytes
/// that `from_utf8` already accepted as a valid start).
fn sequence_width(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

impl Utf8Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no code point is left unfinished.
    pub fn is_complete(&self) -> bool {
        self.pending_len == 0
    }

    /// Feeds the next chunk of the stream.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), InvalidUtf8> {
        if self.pending_len > 0 {
            let have = self.pending_len as usize;
            let need = sequence_width(self.pending[0]) - have;
            let take = need.min(input.len());
            self.pending[have..have + take].copy_from_slice(&input[..take]);
            let now = have + take;
            match std::str::from_utf8(&self.pending[..now]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                Err(_) => {
                    // Still unfinished, and input is used up.
                    self.pending_len = now as u8;
                    return Ok(());
                }
            }
            input = &input[take..];
        }
        match std::str::from_utf8(input) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
            Err(e) => {
                let tail = &input[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// Ends the stream: an unfinished code point is an error.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.is_complete();
        *self = Self::default();
        if complete {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate_split(bytes: &[u8], sizes: &[usize]) -> Result<(), InvalidUtf8> {
        let mut v = Utf8Validator::new();
        let mut rest = bytes;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes[i % sizes.len()].min(rest.len());
            v.feed(&rest[..n])?;
            rest = &rest[n..];
            i += 1;
        }
        v.finish()
    }

    #[test]
    fn accepts_valid_text_split_anywhere() {
        let text = "κόσμε – hello 𝄞 ∑ ascii € end".as_bytes();
        for size in 1..8 {
            assert_eq!(validate_split(text, &[size]), Ok(()), "chunk {size}");
        }
        assert_eq!(validate_split(text, &[1, 2, 3]), Ok(()));
    }

    #[test]
    fn rejects_invalid_and_truncated() {
        // Surrogate half, overlong encodings, out-of-range code point, lone continuation.
        for bad in [
            &b"\xed\xa0\x80"[..],
            b"\xc0\xaf",
            b"\xe0\x80\xaf",
            b"\xf4\x90\x80\x80",
            b"\x80",
            b"ok\xff",
        ] {
            for size in 1..4 {
                assert_eq!(validate_split(bad, &[size]), Err(InvalidUtf8), "{bad:x?}");
            }
        }
        // A message that ends in the middle of a code point.
        assert_eq!(
            validate_split("€".as_bytes()[..2].as_ref(), &[1]),
            Err(InvalidUtf8)
        );
    }

    #[test]
    fn fails_fast_on_an_impossible_prefix() {
        // 0xF4 0x90 can never start a valid sequence (> U+10FFFF): fail on the
        // second byte without waiting for the rest.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xf4"), Ok(()));
        assert_eq!(v.feed(b"\x90"), Err(InvalidUtf8));
        // Autobahn 6.4.1's payload: the invalid byte fails in the chunk it arrives in.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed("κόσμε".as_bytes()), Ok(()));
        assert_eq!(v.feed(b"\xf4\x90\x80\x80"), Err(InvalidUtf8));
    }
}
