//! Rendering text that came from a client (header values, paths, token
//! claims, error messages quoting them) for a log line.
//!
//! Owns the one rule every log site follows for attacker-controlled values:
//! wrap them in [`Esc`]. A raw `\n` would let a client forge log lines, an
//! ESC byte would let it drive the operator's terminal, and a 16 MiB value
//! would flood the log, so control characters and invalid UTF-8 are shown as
//! escapes and the length is capped.

use std::fmt;

/// Bytes of input shown before the rest is summarised as `…(+N bytes)`.
pub const MAX_SHOWN: usize = 200;

/// Attacker text, displayed with control characters escaped (`\n`, `\r`,
/// `\t`, `\x1b`, `\u{85}`…), invalid UTF-8 bytes as `\xNN`, backslashes
/// doubled (so an escape in the output is never ambiguous with literal
/// text), and at most [`MAX_SHOWN`] input bytes.
#[derive(Clone, Copy)]
pub struct Esc<'a>(pub &'a [u8]);

impl<'a> Esc<'a> {
    pub fn str(s: &'a str) -> Esc<'a> {
        Esc(s.as_bytes())
    }
}

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        let shown = &self.0[..self.0.len().min(MAX_SHOWN)];
        for chunk in shown.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '\n' => f.write_str("\\n")?,
                    '\r' => f.write_str("\\r")?,
                    '\t' => f.write_str("\\t")?,
                    // C0, DEL and C1 controls; also the Unicode line and
                    // paragraph separators and bidi overrides, which some
                    // viewers render as line breaks or reorder text with.
                    c if c.is_control()
                        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}')
                        || matches!(c, '\u{2066}'..='\u{2069}') =>
                    {
                        if (c as u32) < 0x80 {
                            write!(f, "\\x{:02x}", c as u32)?
                        } else {
                            write!(f, "\\u{{{:x}}}", c as u32)?
                        }
                    }
                    c => f.write_char(c)?,
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        if self.0.len() > shown.len() {
            write!(f, "…(+{} bytes)", self.0.len() - shown.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(b: &[u8]) -> String {
        Esc(b).to_string()
    }

    #[test]
    fn control_characters_cannot_break_a_log_line() {
        let alg = "HS256\n2026-01-01T00:00:00Z  INFO forged line\x1b[2J\r";
        let shown = Esc::str(alg).to_string();
        assert_eq!(
            shown,
            "HS256\\n2026-01-01T00:00:00Z  INFO forged line\\x1b[2J\\r"
        );
        assert!(!shown.chars().any(|c| c.is_control()));
        assert_eq!(esc(b"a\tb\x00c\x7f"), "a\\tb\\x00c\\x7f");
        assert_eq!(
            esc("x\u{85}y\u{2028}z\u{202e}".as_bytes()),
            "x\\u{85}y\\u{2028}z\\u{202e}"
        );
    }

    #[test]
    fn invalid_utf8_and_backslashes_are_unambiguous() {
        assert_eq!(esc(b"caf\xe9"), "caf\\xe9");
        // A literal backslash-x in the input does not look like an escape.
        assert_eq!(esc(b"\\xe9"), "\\\\xe9");
        assert_eq!(esc("café ✓".as_bytes()), "café ✓");
    }

    #[test]
    fn long_values_are_capped() {
        let long = vec![b'a'; MAX_SHOWN + 1000];
        let shown = esc(&long);
        assert!(shown.starts_with(&"a".repeat(MAX_SHOWN)));
        assert!(shown.ends_with("…(+1000 bytes)"), "{shown}");
        // A cut inside a multi-byte character shows its bytes, not a panic.
        let mut s = vec![b'a'; MAX_SHOWN - 1];
        s.extend_from_slice("é".as_bytes());
        assert!(esc(&s).ends_with("\\xc3…(+1 bytes)"), "{}", esc(&s));
    }
}
