//! TLS errors of one connection, and the close reason each one maps to.
//!
//! Every error a peer can provoke is a value here, never a panic: the event
//! loop sends whatever alert rustls or our record layer queued (already in
//! the output `Vec`) and closes the socket, counting the close under
//! [`TlsCloseReason::label`].

use thiserror::Error;

/// Why a TLS connection failed.
#[derive(Debug, Error)]
pub enum TlsError {
    /// The peer broke the TLS protocol (garbage instead of a ClientHello, a
    /// bad record, a failed MAC, an unsupported version or no common cipher
    /// suite). rustls has queued a fatal alert where the protocol allows one.
    #[error("TLS protocol error: {0}")]
    Protocol(#[source] rustls::Error),
    /// A TLS 1.3 record after the handshake was bad (the server's own
    /// record layer, [`record`](super::record)): failed tag, wrong type,
    /// oversize, a handshake message other than KeyUpdate, the peer's
    /// fatal alert. The fatal alert RFC 8446 names for it has been queued.
    #[error("TLS record error: {0}")]
    Record(#[from] super::record::RecordError),
    /// A handshake that has not finished holds more buffered bytes than the
    /// handshake budget allows (a huge or never-ending ClientHello).
    #[error("TLS handshake buffered {buffered} bytes, over the {limit}-byte budget")]
    HandshakeTooLarge { buffered: usize, limit: usize },
    /// An established connection holds more than one record's worth of
    /// unprocessed ciphertext. rustls rejects over-long records itself, so
    /// this is a safety net that keeps the carry bounded whatever happens.
    #[error("TLS connection buffered {buffered} bytes, over the {limit}-byte record bound")]
    RecordTooLarge { buffered: usize, limit: usize },
    /// Application data was offered before the handshake finished, or after
    /// this side sent close_notify: the session has a bug, not the peer.
    #[error("TLS connection cannot send application data now")]
    NotWritable,
    /// The record sequence space is used up (2^64 records in TLS 1.2; TLS 1.3
    /// refreshes keys instead). A close_notify has been queued.
    #[error("TLS traffic keys exhausted")]
    KeysExhausted,
    /// Creating the per-connection state failed (no usable configuration).
    #[error("TLS connection setup failed: {0}")]
    Setup(#[source] rustls::Error),
}

/// The close reason a TLS failure is counted under, a bounded label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsCloseReason {
    /// The handshake failed (garbage, no common version/suite, bad message).
    HandshakeFailed,
    /// The handshake buffered past its budget.
    HandshakeTooLarge,
    /// A record after the handshake was bad (MAC failure, bad type, ...).
    BadRecord,
    /// Keys exhausted or an internal misuse: the server closes cleanly.
    ServerClose,
}

impl TlsCloseReason {
    /// A metric label for this reason.
    pub fn label(self) -> &'static str {
        match self {
            TlsCloseReason::HandshakeFailed => "tls_handshake_failed",
            TlsCloseReason::HandshakeTooLarge => "tls_handshake_too_large",
            TlsCloseReason::BadRecord => "tls_bad_record",
            TlsCloseReason::ServerClose => "tls_server_close",
        }
    }
}

impl TlsError {
    /// The close reason for this error. `handshaking` says whether the
    /// handshake was still running when it happened.
    pub fn close_reason(&self, handshaking: bool) -> TlsCloseReason {
        match self {
            TlsError::Protocol(_) if handshaking => TlsCloseReason::HandshakeFailed,
            TlsError::Protocol(_) | TlsError::Record(_) | TlsError::RecordTooLarge { .. } => {
                TlsCloseReason::BadRecord
            }
            TlsError::HandshakeTooLarge { .. } => TlsCloseReason::HandshakeTooLarge,
            TlsError::NotWritable | TlsError::KeysExhausted | TlsError::Setup(_) => {
                TlsCloseReason::ServerClose
            }
        }
    }
}
