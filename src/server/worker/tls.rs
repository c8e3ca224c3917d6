//! The worker's side of TLS: the buffers all its TLS connections share
//! ([`TlsWorker`]), and reading a socket through TLS into plaintext for the
//! session. Handshake flights, tickets and alerts rustls owes the peer are
//! written right after the read that produced them; a TLS error writes its
//! alert, is counted under `wsgate_tls_handshake_failures_total{reason}`,
//! and closes the connection.

use std::io::{self, Read};

use rustls::HandshakeKind;

use crate::stats::WorkerStats;
use crate::tls::{TlsCloseReason, TlsConn, TlsContext, TlsError, TlsLimits, TlsScratch};

use super::super::tls_io::TlsState;
use super::epoll::EpollConn;
use super::SCRATCH_BYTES;

/// Per-worker TLS buffers and the context new connections start from.
pub(crate) struct TlsWorker {
    ctx: TlsContext,
    scratch: TlsScratch,
    /// Plaintext decrypted by the last read, handed to the session.
    pub plain: Vec<u8>,
    /// Records produced by the last read (handshake, tickets, alerts).
    out: Vec<u8>,
}

/// What one read through TLS gave.
pub(crate) enum TlsReadResult {
    /// `raw` ciphertext bytes were read; the plaintext (maybe none) is in
    /// [`TlsWorker::plain`]. `peer_closed`: close_notify came (EOF after
    /// the plaintext).
    Bytes {
        raw: usize,
        peer_closed: bool,
    },
    Eof,
    WouldBlock,
    Interrupted,
    /// A TLS error: its alert is written, it is counted; close now.
    Failed,
}

impl TlsWorker {
    pub fn new(ctx: TlsContext, limits: TlsLimits) -> Self {
        Self {
            ctx,
            scratch: TlsScratch::new(limits),
            plain: Vec::with_capacity(SCRATCH_BYTES),
            out: Vec::new(),
        }
    }

    /// The TLS state of a newly accepted connection.
    pub fn new_conn(&self) -> Result<Box<TlsState>, TlsError> {
        let conn = TlsConn::new(self.ctx.server_config().clone())?;
        Ok(Box::new(TlsState::new(conn)))
    }

    /// Reads `conn`'s socket once through its TLS layer.
    pub fn read(&mut self, conn: &mut EpollConn, stats: &WorkerStats) -> TlsReadResult {
        let Some(tls) = conn.tls.as_deref_mut() else {
            return TlsReadResult::Eof;
        };
        let handshaking = tls.conn.is_handshaking();
        let mut read = tls.conn.begin_read(&mut self.scratch, SCRATCH_BYTES);
        let n = match (&conn.stream).read(read.buf()) {
            // EOF without close_notify: a truncation, handled as any EOF
            // (WebSocket frames carry their own lengths and close frames).
            Ok(0) => return TlsReadResult::Eof,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return TlsReadResult::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return TlsReadResult::Interrupted,
            Err(_) => return TlsReadResult::Eof,
        };
        self.plain.clear();
        self.out.clear();
        let result = read.finish(n, &mut self.plain, &mut self.out);
        tls.queue(&self.out);
        match result {
            Ok(outcome) => {
                // WebSocket bytes, as on a plain connection: the plaintext,
                // not the records and handshake carrying it.
                stats.bytes_in.add(outcome.plaintext as u64);
                if outcome.handshake_completed {
                    match tls.conn.handshake_kind() {
                        Some(HandshakeKind::Resumed) => stats.tls_handshakes_resumed.inc(),
                        _ => stats.tls_handshakes_full.inc(),
                    }
                }
                if tls.flush(&conn.stream).is_err() {
                    return TlsReadResult::Eof;
                }
                TlsReadResult::Bytes {
                    raw: n,
                    peer_closed: outcome.peer_closed,
                }
            }
            Err(e) => {
                let reason = e.close_reason(handshaking);
                match reason {
                    TlsCloseReason::HandshakeFailed => stats.tls_failed_handshake.inc(),
                    TlsCloseReason::HandshakeTooLarge => stats.tls_failed_too_large.inc(),
                    TlsCloseReason::BadRecord => stats.tls_failed_bad_record.inc(),
                    TlsCloseReason::ServerClose => stats.tls_failed_server_close.inc(),
                }
                tracing::debug!(reason = reason.label(), error = %crate::escape::Esc::str(&e.to_string()), "TLS error; closing");
                // Best effort: the alert tells the peer why.
                let _ = tls.flush(&conn.stream);
                TlsReadResult::Failed
            }
        }
    }
}
