//! The TLS 1.3 record layer after the handshake (RFC 8446 section 5): pure
//! code over bytes, no IO, no key schedule.
//!
//! Once a TLS 1.3 handshake is over, [`session`](super::session) drops
//! rustls' connection and keeps per direction only a [`Direction`] (raw
//! key, IV, sequence number). This module turns ciphertext into
//! [`Content`] and plaintext into records with them. What a record may
//! carry after the handshake is narrow, and everything else is refused
//! with the alert RFC 8446 names:
//!
//! - outer type application_data only (a change_cipher_spec, a plaintext
//!   alert or handshake record is `unexpected_message`); encrypted length
//!   at most 2^14 + 256, the inner plaintext at most 2^14 + 1
//!   (`record_overflow`); a failed tag is `bad_record_mac`;
//! - inner type application_data (any length, zero included), an alert
//!   (close_notify ends the read side; any other alert is the peer's fatal
//!   error and gets no answer) or handshake: exactly one KeyUpdate per
//!   record (a KeyUpdate changes the key, so RFC 8446 5.1 makes it end its
//!   record); any other handshake message, a fragment of one, or a record
//!   of zero padding only is `unexpected_message`.
//!
//! Records are written with inner type and no padding, at most 2^14
//! plaintext bytes each. A sequence number is never reused: at 2^64 - 1 a
//! direction refuses ([`RecordError::SequenceExhausted`]).

use aws_lc_rs::aead::Aad;
use rustls::AlertDescription;

use super::compact_aead::CompactKey;

/// The largest plaintext a record carries (RFC 8446 5.1).
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// The largest encrypted record body a peer may send (RFC 8446 5.2).
pub const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// The record header: type, legacy version, length.
pub const HEADER_LEN: usize = 5;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
const HANDSHAKE_KEY_UPDATE: u8 = 24;
const LEGACY_VERSION: [u8; 2] = [0x03, 0x03];
const ALERT_WARNING: u8 = 1;
const ALERT_FATAL: u8 = 2;

/// What is wrong with a record, and the alert it is answered with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// An outer record type other than application_data after the
    /// handshake (change_cipher_spec, a plaintext alert or handshake
    /// message, garbage), or an inner type TLS 1.3 does not carry there.
    #[error("TLS record of content type {0} after the handshake")]
    UnexpectedContentType(u8),
    /// An encrypted record longer than 2^14 + 256 bytes.
    #[error("TLS record of {0} bytes, over the 2^14 + 256 limit")]
    CiphertextOverflow(usize),
    /// A decrypted record longer than 2^14 + 1 bytes.
    #[error("TLS record with {0} bytes of plaintext, over the 2^14 + 1 limit")]
    PlaintextOverflow(usize),
    /// The record did not authenticate (wrong key, tampering, reordering).
    #[error("TLS record failed to decrypt")]
    BadRecordMac,
    /// The decrypted record was padding only: no content type.
    #[error("TLS record without a content type (all padding)")]
    NoContentType,
    /// A handshake message other than KeyUpdate after the handshake.
    #[error("TLS handshake message of type {0} after the handshake")]
    UnexpectedHandshake(u8),
    /// A handshake record that is empty, holds part of a message or more
    /// than one, or a malformed KeyUpdate or alert.
    #[error("malformed TLS {0}")]
    Decode(&'static str),
    /// A KeyUpdate whose request byte is neither 0 nor 1.
    #[error("TLS KeyUpdate with request value {0}")]
    BadKeyUpdateRequest(u8),
    /// More KeyUpdates in a row, without application data between them,
    /// than [`MAX_KEY_UPDATES_IN_A_ROW`]: each costs a key derivation (and,
    /// when requested, an answer), so a flood is refused as rustls does.
    #[error("more than {0} TLS KeyUpdates without application data")]
    TooManyKeyUpdates(u8),
    /// The peer's own alert (not close_notify): it ends the connection and
    /// gets no answer.
    #[error("TLS alert {0:?} received")]
    AlertReceived(AlertDescription),
    /// A direction used up its sequence numbers.
    #[error("TLS record sequence numbers exhausted")]
    SequenceExhausted,
    /// aws-lc refused a key (cannot happen with a key from the key
    /// schedule; an error rather than a panic all the same).
    #[error("TLS record key could not be set up")]
    KeySetup,
}

/// KeyUpdates accepted in a row without application data between them
/// (rustls' and BoringSSL's limit).
pub const MAX_KEY_UPDATES_IN_A_ROW: u8 = 32;

impl RecordError {
    /// The fatal alert to send for this error; `None` when the peer's own
    /// alert ended the connection or nothing can be encrypted any more.
    pub fn alert(&self) -> Option<AlertDescription> {
        Some(match self {
            RecordError::UnexpectedContentType(_)
            | RecordError::NoContentType
            | RecordError::UnexpectedHandshake(_)
            | RecordError::TooManyKeyUpdates(_) => AlertDescription::UnexpectedMessage,
            RecordError::CiphertextOverflow(_) | RecordError::PlaintextOverflow(_) => {
                AlertDescription::RecordOverflow
            }
            RecordError::BadRecordMac => AlertDescription::BadRecordMac,
            RecordError::Decode(_) => AlertDescription::DecodeError,
            RecordError::BadKeyUpdateRequest(_) => AlertDescription::IllegalParameter,
            RecordError::KeySetup => AlertDescription::InternalError,
            RecordError::AlertReceived(_) | RecordError::SequenceExhausted => return None,
        })
    }
}

/// One direction's record protection: key, IV and the next record's
/// sequence number.
pub struct Direction {
    pub key: CompactKey,
    pub seq: u64,
}

impl Direction {
    pub fn new(key: CompactKey, seq: u64) -> Self {
        Self { key, seq }
    }

    /// This record's sequence number, and the next one's reserved.
    fn take_seq(&mut self) -> Result<u64, RecordError> {
        let seq = self.seq;
        // u64::MAX itself is never used: the check is one comparison and
        // keeps `seq + 1` from overflowing.
        if seq == u64::MAX {
            return Err(RecordError::SequenceExhausted);
        }
        self.seq = seq + 1;
        Ok(seq)
    }
}

/// What a record carried.
#[derive(Debug, PartialEq, Eq)]
pub enum Content<'a> {
    /// Application data (possibly empty).
    Data(&'a [u8]),
    /// The peer's close_notify: no more data comes.
    CloseNotify,
    /// The peer changed its sending key; with `update_requested` it asks
    /// this side to change its own too.
    KeyUpdate { update_requested: bool },
}

/// Checks the header at the start of `buf`: `Ok(None)` when the record
/// has not fully arrived, else its total length (header included).
/// Refuses a bad type or length as soon as the header is there, so no
/// bytes are buffered for a record that will be refused anyway.
pub fn record_len(buf: &[u8]) -> Result<Option<usize>, RecordError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        // Even a lone first byte can be judged.
        return match buf.first() {
            Some(&t) if t != CONTENT_APPLICATION_DATA => Err(RecordError::UnexpectedContentType(t)),
            _ => Ok(None),
        };
    };
    if header[0] != CONTENT_APPLICATION_DATA {
        return Err(RecordError::UnexpectedContentType(header[0]));
    }
    // legacy_record_version "MUST be ignored for all purposes" (RFC 8446
    // 5.1); it is authenticated as part of the AAD all the same.
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if len > MAX_CIPHERTEXT {
        return Err(RecordError::CiphertextOverflow(len));
    }
    Ok((buf.len() >= HEADER_LEN + len).then_some(HEADER_LEN + len))
}

/// Decrypts the first record of `buf` in place. `Ok(None)`: it has not
/// fully arrived (nothing consumed). Otherwise the record's length in
/// `buf` and what it carried (borrowing the decrypted bytes).
pub fn open_record<'a>(
    buf: &'a mut [u8],
    rx: &mut Direction,
) -> Result<Option<(usize, Content<'a>)>, RecordError> {
    if record_len(buf)?.is_none() {
        return Ok(None);
    }
    let key = rx.key.expand().map_err(|_| RecordError::KeySetup)?;
    open_record_with(buf, rx, &key)
}

/// [`open_record`] with `rx`'s key already expanded, so that a read of
/// several records expands it once (as [`seal_data`] does for a batch).
pub fn open_record_with<'a>(
    buf: &'a mut [u8],
    rx: &mut Direction,
    key: &aws_lc_rs::aead::LessSafeKey,
) -> Result<Option<(usize, Content<'a>)>, RecordError> {
    let Some(total) = record_len(buf)? else {
        return Ok(None);
    };
    let mut aad = [0u8; HEADER_LEN];
    aad.copy_from_slice(&buf[..HEADER_LEN]);
    let body = &mut buf[HEADER_LEN..total];
    if body.len() < rx.key.tag_len() {
        return Err(RecordError::BadRecordMac);
    }
    let seq = rx.take_seq()?;
    let plain = key
        .open_in_place(rx.key.nonce(seq), Aad::from(aad), body)
        .map_err(|_| RecordError::BadRecordMac)?;
    if plain.len() > MAX_PLAINTEXT + 1 {
        return Err(RecordError::PlaintextOverflow(plain.len()));
    }
    // The content type is the last non-zero byte; zeros after it are
    // padding (RFC 8446 5.4).
    let end = plain
        .iter()
        .rposition(|&b| b != 0)
        .ok_or(RecordError::NoContentType)?;
    let content = &plain[..end];
    let content = match plain[end] {
        CONTENT_APPLICATION_DATA => Content::Data(content),
        CONTENT_ALERT => match *content {
            [_level, 0] => Content::CloseNotify,
            [_level, desc] => return Err(RecordError::AlertReceived(desc.into())),
            _ => return Err(RecordError::Decode("alert")),
        },
        CONTENT_HANDSHAKE => parse_key_update(content)?,
        other => return Err(RecordError::UnexpectedContentType(other)),
    };
    Ok(Some((total, content)))
}

/// A handshake record's content, which after the handshake may only be a
/// single KeyUpdate (RFC 8446 4.6.3).
fn parse_key_update(content: &[u8]) -> Result<Content<'static>, RecordError> {
    let Some(&typ) = content.first() else {
        // Zero-length handshake fragments are forbidden (RFC 8446 5.1).
        return Err(RecordError::UnexpectedContentType(CONTENT_HANDSHAKE));
    };
    if typ != HANDSHAKE_KEY_UPDATE {
        return Err(RecordError::UnexpectedHandshake(typ));
    }
    match *content {
        [_, 0, 0, 1, request] => match request {
            0 => Ok(Content::KeyUpdate {
                update_requested: false,
            }),
            1 => Ok(Content::KeyUpdate {
                update_requested: true,
            }),
            other => Err(RecordError::BadKeyUpdateRequest(other)),
        },
        _ => Err(RecordError::Decode("KeyUpdate")),
    }
}

/// Appends `data` to `out` as application-data records of at most 2^14
/// plaintext bytes each. Nothing is appended on an error.
pub fn seal_data(data: &[u8], tx: &mut Direction, out: &mut Vec<u8>) -> Result<(), RecordError> {
    let start = out.len();
    let seq = tx.seq;
    let result = (|| {
        // One key expansion for the whole batch.
        let key = tx.key.expand().map_err(|_| RecordError::KeySetup)?;
        let records = data.len().div_ceil(MAX_PLAINTEXT).max(1);
        out.reserve(data.len() + records * (HEADER_LEN + 1 + tx.key.tag_len()));
        for chunk in data.chunks(MAX_PLAINTEXT) {
            seal_one(&key, CONTENT_APPLICATION_DATA, chunk, tx, out)?;
        }
        Ok(())
    })();
    if result.is_err() {
        out.truncate(start);
        tx.seq = seq;
    }
    result
}

/// Appends an alert record: close_notify as a warning, anything else
/// fatal.
pub fn seal_alert(
    alert: AlertDescription,
    tx: &mut Direction,
    out: &mut Vec<u8>,
) -> Result<(), RecordError> {
    let level = match alert {
        AlertDescription::CloseNotify => ALERT_WARNING,
        _ => ALERT_FATAL,
    };
    let key = tx.key.expand().map_err(|_| RecordError::KeySetup)?;
    seal_one(&key, CONTENT_ALERT, &[level, u8::from(alert)], tx, out)
}

/// Appends a KeyUpdate record (sealed with the current key: the caller
/// switches `tx` to the next key right after).
pub fn seal_key_update(
    update_requested: bool,
    tx: &mut Direction,
    out: &mut Vec<u8>,
) -> Result<(), RecordError> {
    let key = tx.key.expand().map_err(|_| RecordError::KeySetup)?;
    let message = [HANDSHAKE_KEY_UPDATE, 0, 0, 1, u8::from(update_requested)];
    seal_one(&key, CONTENT_HANDSHAKE, &message, tx, out)
}

/// Appends one record: header, `content`, inner type, tag.
fn seal_one(
    key: &aws_lc_rs::aead::LessSafeKey,
    inner_type: u8,
    content: &[u8],
    tx: &mut Direction,
    out: &mut Vec<u8>,
) -> Result<(), RecordError> {
    debug_assert!(content.len() <= MAX_PLAINTEXT);
    let seq = tx.take_seq()?;
    let body_len = content.len() + 1 + tx.key.tag_len();
    // At most 2^14 + 1 + 16: fits the u16 length field.
    let len = u16::try_from(body_len).map_err(|_| RecordError::PlaintextOverflow(body_len))?;
    let [hi, lo] = len.to_be_bytes();
    let header = [
        CONTENT_APPLICATION_DATA,
        LEGACY_VERSION[0],
        LEGACY_VERSION[1],
        hi,
        lo,
    ];
    out.extend_from_slice(&header);
    let body = out.len();
    out.extend_from_slice(content);
    out.push(inner_type);
    let sealed =
        key.seal_in_place_separate_tag(tx.key.nonce(seq), Aad::from(header), &mut out[body..]);
    match sealed {
        Ok(tag) => {
            out.extend_from_slice(tag.as_ref());
            Ok(())
        }
        Err(_) => {
            out.truncate(body - HEADER_LEN);
            Err(RecordError::KeySetup)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};
    use rustls::ConnectionTrafficSecrets;

    /// A test key: AES-256-GCM or ChaCha20-Poly1305 (AeadKey's public
    /// constructor makes 32-byte keys only; AES-128 is covered by the
    /// real-peer tests).
    fn key(chacha: bool) -> CompactKey {
        let (key, iv) = (AeadKey::from([3u8; 32]), Iv::new([5u8; 12]));
        let secrets = if chacha {
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }
        } else {
            ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        };
        CompactKey::from_secrets(secrets).expect("a known AEAD")
    }

    fn pair(chacha: bool) -> (Direction, Direction) {
        (
            Direction::new(key(chacha), 0),
            Direction::new(key(chacha), 0),
        )
    }

    fn open_all(mut buf: Vec<u8>, rx: &mut Direction) -> Result<Vec<Vec<u8>>, RecordError> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((n, content)) = open_record(&mut buf[at..], rx)? {
            match content {
                Content::Data(d) => out.push(d.to_vec()),
                other => panic!("unexpected {other:?}"),
            }
            at += n;
        }
        assert_eq!(at, buf.len(), "whole records only");
        Ok(out)
    }

    /// Seals an arbitrary inner plaintext (content, type, padding already
    /// in `inner`) the way RFC 8446 5.2 says, independently of `seal_one`.
    fn seal_inner(inner: &[u8], tx: &mut Direction) -> Vec<u8> {
        let key = tx.key.expand().unwrap();
        let len = (inner.len() + tx.key.tag_len()) as u16;
        let header = [23, 3, 3, (len >> 8) as u8, len as u8];
        let mut body = inner.to_vec();
        key.seal_in_place_append_tag(tx.key.nonce(tx.seq), Aad::from(header), &mut body)
            .unwrap();
        tx.seq += 1;
        let mut record = header.to_vec();
        record.extend_from_slice(&body);
        record
    }

    fn open_one(mut record: Vec<u8>, rx: &mut Direction) -> Result<String, RecordError> {
        let (n, content) = open_record(&mut record, rx)?.expect("a whole record");
        let _ = n;
        Ok(format!("{content:?}"))
    }

    #[test]
    fn data_round_trips_in_records_of_at_most_2_14() {
        for chacha in [false, true] {
            let (mut tx, mut rx) = pair(chacha);
            for len in [0usize, 1, 100, MAX_PLAINTEXT, MAX_PLAINTEXT + 1, 40_000] {
                let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let mut out = Vec::new();
                let seq = tx.seq;
                seal_data(&data, &mut tx, &mut out).unwrap();
                let records = len.div_ceil(MAX_PLAINTEXT) as u64;
                assert_eq!(tx.seq - seq, records, "len {len}");
                let tag = tx.key.tag_len();
                assert_eq!(out.len(), len + records as usize * (HEADER_LEN + 1 + tag));
                let got = open_all(out, &mut rx).unwrap();
                assert_eq!(got.len() as u64, records);
                assert!(got.iter().all(|r| r.len() <= MAX_PLAINTEXT));
                assert_eq!(got.concat(), data);
            }
            assert_eq!(tx.seq, rx.seq);
        }
    }

    /// A record split anywhere is "not yet" (and consumes nothing) until
    /// its last byte arrives.
    #[test]
    fn split_records_wait_for_their_last_byte() {
        let (mut tx, mut rx) = pair(false);
        let mut out = Vec::new();
        seal_data(b"hello", &mut tx, &mut out).unwrap();
        seal_data(b"world!", &mut tx, &mut out).unwrap();
        let first = HEADER_LEN + 5 + 1 + 16;
        for cut in 0..first {
            let mut part = out[..cut].to_vec();
            assert_eq!(open_record(&mut part, &mut rx), Ok(None), "cut {cut}");
            assert_eq!(rx.seq, 0);
        }
        let mut buf = out.clone();
        let (n, content) = open_record(&mut buf, &mut rx).unwrap().unwrap();
        assert_eq!((n, content), (first, Content::Data(b"hello")));
        let mut rest = out[first..].to_vec();
        let (_, content) = open_record(&mut rest, &mut rx).unwrap().unwrap();
        assert_eq!(content, Content::Data(b"world!"));
    }

    #[test]
    fn tampered_or_reordered_records_fail_with_bad_record_mac() {
        let (mut tx, _) = pair(true);
        let mut out = Vec::new();
        seal_data(b"payload", &mut tx, &mut out).unwrap();
        for i in 0..out.len() {
            if i == 0 || i == 3 || i == 4 {
                continue; // type and length are judged before the tag
            }
            let mut bad = out.clone();
            bad[i] ^= 0x40;
            let (_, mut rx) = pair(true);
            assert_eq!(
                open_record(&mut bad, &mut rx),
                Err(RecordError::BadRecordMac),
                "byte {i}"
            );
        }
        // The right record under the wrong sequence number.
        let (_, mut rx) = pair(true);
        rx.seq = 1;
        let err = open_record(&mut out.clone(), &mut rx).unwrap_err();
        assert_eq!(err, RecordError::BadRecordMac);
        assert_eq!(err.alert(), Some(AlertDescription::BadRecordMac));
        // Shorter than a tag.
        let mut short = vec![23, 3, 3, 0, 3, 1, 2, 3];
        assert_eq!(
            open_record(&mut short, &mut rx),
            Err(RecordError::BadRecordMac)
        );
    }

    #[test]
    fn oversize_records_are_record_overflow() {
        let (mut tx, mut rx) = pair(false);
        // Refused from the header alone: nothing of the body is waited for.
        let len = (MAX_CIPHERTEXT + 1) as u16;
        let mut header = vec![23, 3, 3, (len >> 8) as u8, len as u8];
        let err = open_record(&mut header, &mut rx).unwrap_err();
        assert_eq!(err, RecordError::CiphertextOverflow(MAX_CIPHERTEXT + 1));
        assert_eq!(err.alert(), Some(AlertDescription::RecordOverflow));
        // Exactly the limit is allowed through to decryption.
        let mut inner = vec![7u8; MAX_PLAINTEXT];
        inner.push(23);
        let record = seal_inner(&inner, &mut tx);
        assert!(open_one(record, &mut rx)
            .unwrap()
            .starts_with("Data([7, 7,"));
        // Inner plaintext over 2^14 + 1 (padding counts) is refused.
        let mut inner = vec![7u8; MAX_PLAINTEXT];
        inner.extend_from_slice(&[23, 0]);
        let record = seal_inner(&inner, &mut tx);
        let err = open_one(record, &mut rx).unwrap_err();
        assert_eq!(err, RecordError::PlaintextOverflow(MAX_PLAINTEXT + 2));
        assert_eq!(err.alert(), Some(AlertDescription::RecordOverflow));
    }

    /// change_cipher_spec, plaintext handshake and alert records are
    /// refused on their first byte.
    #[test]
    fn non_application_data_records_are_unexpected() {
        let (_, mut rx) = pair(false);
        for (bytes, typ) in [
            (vec![20u8, 3, 3, 0, 1, 1], 20u8),
            (vec![22], 22),
            (vec![21, 3, 3, 0, 2, 2, 40], 21),
            (vec![0x47, 0x45, 0x54, 0x20], 0x47), // "GET "
        ] {
            let mut buf = bytes;
            let err = open_record(&mut buf, &mut rx).unwrap_err();
            assert_eq!(err, RecordError::UnexpectedContentType(typ));
            assert_eq!(err.alert(), Some(AlertDescription::UnexpectedMessage));
        }
        assert_eq!(rx.seq, 0);
    }

    #[test]
    fn inner_content_is_checked() {
        let (mut tx, mut rx) = pair(true);
        let mut check = |inner: &[u8], want: Result<&str, RecordError>| {
            let record = seal_inner(inner, &mut tx);
            let got = open_one(record, &mut rx);
            assert_eq!(got.as_deref().map_err(Clone::clone), want, "{inner:?}");
        };
        // Padding is stripped.
        check(b"hi\x17\0\0\0", Ok("Data([104, 105])"));
        check(b"\x17", Ok("Data([])"));
        // Padding only, or an empty handshake fragment.
        check(b"\0\0\0", Err(RecordError::NoContentType));
        check(b"\x16", Err(RecordError::UnexpectedContentType(22)));
        // An encrypted change_cipher_spec.
        check(b"\x01\x14", Err(RecordError::UnexpectedContentType(20)));
        // KeyUpdate, either request; a bad request value; two in one
        // record; a fragment; some other handshake message.
        check(
            b"\x18\0\0\x01\x00\x16",
            Ok("KeyUpdate { update_requested: false }"),
        );
        check(
            b"\x18\0\0\x01\x01\x16\0",
            Ok("KeyUpdate { update_requested: true }"),
        );
        check(
            b"\x18\0\0\x01\x02\x16",
            Err(RecordError::BadKeyUpdateRequest(2)),
        );
        check(
            b"\x18\0\0\x01\x00\x18\0\0\x01\x00\x16",
            Err(RecordError::Decode("KeyUpdate")),
        );
        check(b"\x18\0\0\x16", Err(RecordError::Decode("KeyUpdate")));
        check(
            b"\x04\0\0\x01\x00\x16",
            Err(RecordError::UnexpectedHandshake(4)),
        );
        check(
            b"\x14\0\0\x00\x16",
            Err(RecordError::UnexpectedHandshake(20)),
        );
        // Alerts: close_notify; the peer's fatal alert (no answer); junk.
        check(b"\x01\x00\x15", Ok("CloseNotify"));
        check(
            b"\x02\x28\x15",
            Err(RecordError::AlertReceived(
                AlertDescription::HandshakeFailure,
            )),
        );
        check(b"\x02\x28\x00\x15", Err(RecordError::Decode("alert")));
        assert_eq!(
            RecordError::AlertReceived(AlertDescription::HandshakeFailure).alert(),
            None
        );
    }

    #[test]
    fn alerts_and_key_updates_round_trip() {
        let (mut tx, mut rx) = pair(false);
        let mut out = Vec::new();
        seal_key_update(true, &mut tx, &mut out).unwrap();
        seal_alert(AlertDescription::CloseNotify, &mut tx, &mut out).unwrap();
        let (n, content) = open_record(&mut out, &mut rx).unwrap().unwrap();
        assert_eq!(
            content,
            Content::KeyUpdate {
                update_requested: true
            }
        );
        let (_, content) = open_record(&mut out[n..], &mut rx).unwrap().unwrap();
        assert_eq!(content, Content::CloseNotify);
        let mut out = Vec::new();
        seal_alert(AlertDescription::UnexpectedMessage, &mut tx, &mut out).unwrap();
        assert_eq!(
            open_record(&mut out, &mut rx).unwrap_err(),
            RecordError::AlertReceived(AlertDescription::UnexpectedMessage)
        );
    }

    /// The last sequence number is never used; a refused seal leaves the
    /// output and the counter as they were.
    #[test]
    fn sequence_numbers_run_out_instead_of_wrapping() {
        let (mut tx, mut rx) = pair(false);
        tx.seq = u64::MAX - 1;
        rx.seq = u64::MAX - 1;
        let mut out = Vec::new();
        seal_data(b"last", &mut tx, &mut out).unwrap();
        assert_eq!(tx.seq, u64::MAX);
        let len = out.len();
        assert_eq!(
            seal_data(b"one more", &mut tx, &mut out),
            Err(RecordError::SequenceExhausted)
        );
        assert_eq!((out.len(), tx.seq), (len, u64::MAX));
        // Two records at once, of which only one fits: neither is written.
        tx.seq = u64::MAX - 1;
        let big = vec![0u8; MAX_PLAINTEXT + 1];
        assert_eq!(
            seal_data(&big, &mut tx, &mut out),
            Err(RecordError::SequenceExhausted)
        );
        assert_eq!((out.len(), tx.seq), (len, u64::MAX - 1));
        assert_eq!(
            open_one(out.clone(), &mut rx),
            Ok("Data([108, 97, 115, 116])".into())
        );
        let err = open_record(&mut out, &mut rx).unwrap_err();
        assert_eq!(err, RecordError::SequenceExhausted);
        assert_eq!(err.alert(), None);
    }
}
