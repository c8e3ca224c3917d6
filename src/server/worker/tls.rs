//! The worker's side of TLS, for both event loops: the buffers all its TLS
//! connections share ([`TlsWorker`]), and turning ciphertext a loop read
//! into plaintext for the session. Handshake flights, tickets and alerts
//! rustls owes the peer are appended to the caller's record buffer, which
//! the loop writes right after the read that produced them; a TLS error is
//! counted under `wsgate_tls_handshake_failures_total{reason}` and closes
//! the connection (after its alert).

use std::io;

use rustls::HandshakeKind;

use crate::stats::WorkerStats;
use crate::tls::{TlsCloseReason, TlsConn, TlsContext, TlsError, TlsLimits, TlsScratch};

use super::super::loop_io::Io;
use super::{Worker, SCRATCH_BYTES};
use crate::session::Now;

/// Per-worker TLS buffers and the context new connections start from.
pub(crate) struct TlsWorker {
    ctx: TlsContext,
    scratch: TlsScratch,
    /// Plaintext decrypted by the last read, handed to the session.
    plain: Vec<u8>,
}

/// What one read through TLS gave.
pub(crate) enum TlsReadResult {
    /// `raw` ciphertext bytes were read; the plaintext (maybe none) waits
    /// for [`Worker::take_plaintext`]. `peer_closed`: close_notify came (EOF
    /// after the plaintext).
    Bytes {
        raw: usize,
        peer_closed: bool,
    },
    Eof,
    WouldBlock,
    Interrupted,
    /// A TLS error: its alert is in the records, it is counted; close now.
    Failed,
}

impl TlsWorker {
    pub fn new(ctx: TlsContext, limits: TlsLimits) -> Self {
        Self {
            ctx,
            scratch: TlsScratch::new(limits),
            plain: Vec::with_capacity(SCRATCH_BYTES),
        }
    }

    /// The TLS state of a newly accepted connection.
    pub fn new_conn(&self) -> Result<TlsConn, TlsError> {
        TlsConn::new(self.ctx.server_config().clone())
    }

    /// Reads up to `room` ciphertext bytes once through `tls`: `fill` puts
    /// them into the worker's scratch (a socket read on the epoll loop, a
    /// copy of a received buffer on the io_uring loop) and says how many.
    /// Records owed to the peer are appended to `records`, which the caller
    /// writes next (on `Failed` too: the alert says why).
    pub fn read(
        &mut self,
        tls: &mut TlsConn,
        room: usize,
        fill: impl FnOnce(&mut [u8]) -> io::Result<usize>,
        records: &mut Vec<u8>,
        stats: &WorkerStats,
    ) -> TlsReadResult {
        let handshaking = tls.is_handshaking();
        let mut read = tls.begin_read(&mut self.scratch, room);
        let n = match fill(read.buf()) {
            // EOF without close_notify: a truncation, handled as any EOF
            // (WebSocket frames carry their own lengths and close frames).
            Ok(0) => return TlsReadResult::Eof,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return TlsReadResult::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return TlsReadResult::Interrupted,
            Err(_) => return TlsReadResult::Eof,
        };
        self.plain.clear();
        match read.finish(n, &mut self.plain, records) {
            Ok(outcome) => {
                // WebSocket bytes, as on a plain connection: the plaintext,
                // not the records and handshake carrying it.
                stats.bytes_in.add(outcome.plaintext as u64);
                if outcome.handshake_completed {
                    match tls.handshake_kind() {
                        Some(HandshakeKind::Resumed) => stats.tls_handshakes_resumed.inc(),
                        _ => stats.tls_handshakes_full.inc(),
                    }
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
                TlsReadResult::Failed
            }
        }
    }
}

impl<I: Io> Worker<I> {
    /// Hands the plaintext of the last TLS read to connection `key`'s
    /// session (already counted in by [`TlsWorker::read`]). Returns false
    /// if the connection is gone.
    pub(in crate::server) fn take_plaintext(
        &mut self,
        key: usize,
        now: std::time::Instant,
        t: Now,
    ) -> bool {
        let Some(tw) = self.tls.as_mut() else {
            return true;
        };
        let mut plain = std::mem::take(&mut tw.plain);
        // A TLS read may carry only handshake records.
        let alive = plain.is_empty() || self.on_plaintext(key, &mut plain, now, t);
        if let Some(tw) = self.tls.as_mut() {
            tw.plain = plain;
        }
        alive
    }

    /// The peer's close_notify (the TLS stream's EOF) after connection
    /// `key`'s last plaintext: what it owes is written, then it is handled
    /// as the peer's FIN.
    pub(in crate::server) fn on_close_notify(&mut self, key: usize, t: Now) {
        if self.flush(key) {
            self.on_eof(key, t);
        }
    }
}
