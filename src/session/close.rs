//! The close state machine: how a session ends, started by either side,
//! by the peer's FIN, or by a timeout.
//!
//! RFC 6455 §7.1.1: once both close frames are exchanged the server closes
//! TCP first. A close frame we send is the last thing we send (§5.5.1), and
//! the peer gets `--close-timeout` to answer it.

use crate::protocol::close::close_payload;
use crate::protocol::frame::write_server_frame;
use crate::protocol::{CloseCode, Event, OpCode};

use super::{Ctx, Now, Session, SessionConfig};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for (the rest of) the HTTP upgrade request.
    Handshake,
    /// Exchanging frames.
    Open,
    /// Our last bytes (a close frame or an HTTP error) are queued; data
    /// frames are no longer processed. Once the bytes are written: if the
    /// peer has sent its close frame the connection is done (the server
    /// closes TCP first, RFC 6455 §7.1.1); otherwise the write side is shut
    /// down and the connection ends on the peer's close frame, its FIN, or
    /// the close timeout.
    ///
    /// `peer_closed` also covers a peer whose FIN arrived while output was
    /// still queued: nothing more is read, and what is queued is still
    /// written (a half-closed peer may be reading) until the queue is empty
    /// or the close timeout passes.
    Closing { write_shut: bool, peer_closed: bool },
}

/// The deadline for a connection that starts closing now: the close
/// timeout, or the end of the server's drain if that is sooner-or-set.
pub(super) fn closing_deadline(now: Now, config: &SessionConfig) -> u32 {
    match config.drain_deadline {
        Some(until) => until,
        None => now.tick.saturating_add(config.close_ticks),
    }
}

impl Session {
    /// Queues a close frame (into `out`, the caller's output buffer) and
    /// stops sending anything else; the peer has the close timeout to
    /// answer.
    pub fn start_close(
        &mut self,
        code: CloseCode,
        reason: &str,
        out: &mut Vec<u8>,
        now: Now,
        config: &SessionConfig,
    ) {
        self.queue_close(code, reason, out, false);
        self.deadline = closing_deadline(now, config);
    }

    /// Writes our close frame; `peer_closed` says it answers the peer's.
    pub(super) fn queue_close(
        &mut self,
        code: CloseCode,
        reason: &str,
        out: &mut Vec<u8>,
        peer_closed: bool,
    ) {
        let (payload, n) = close_payload(code, reason);
        write_server_frame(out, OpCode::Close, &payload[..n]);
        self.phase = Phase::Closing {
            write_shut: false,
            peer_closed,
        };
    }

    /// Our last bytes are an HTTP error response: closing starts with them.
    pub(super) fn close_after_response(&mut self) {
        self.head = None;
        self.phase = Phase::Closing {
            write_shut: false,
            peer_closed: false,
        };
    }

    /// While closing, only the peer's close frame matters: it completes the
    /// handshake. Everything else is discarded.
    pub(super) fn watch_for_peer_close(&mut self, data: &mut [u8], cx: &mut Ctx<'_>) {
        let Phase::Closing {
            write_shut,
            peer_closed: false,
        } = self.phase
        else {
            return;
        };
        if self.rx.is_done() {
            return;
        }
        let mut closed = false;
        let _ = self.rx.feed(data, cx.limits, cx.pool, &mut |ev| {
            closed |= matches!(ev, Event::Close(_));
        });
        if closed {
            self.phase = Phase::Closing {
                write_shut,
                peer_closed: true,
            };
        }
    }

    /// The peer's input ended (its FIN, or a read error). Replies produced
    /// from its last bytes (the answer to its close frame, an echo) are
    /// still owed, and a half-closed peer may still be reading (RFC 6455
    /// §5.5.1, §7.1.1): the session stops reading but keeps writing what is
    /// queued, bounded by the close timeout. [`Session::write_to`] then says
    /// when it is done. Returns true when this ended an open connection
    /// without a close frame (an abrupt close).
    pub fn on_eof(&mut self, now: Now, config: &SessionConfig) -> bool {
        let abrupt = self.phase == Phase::Open;
        match self.phase {
            // The close timer already runs.
            Phase::Closing { write_shut, .. } => {
                self.phase = Phase::Closing {
                    write_shut,
                    peer_closed: true,
                }
            }
            Phase::Handshake | Phase::Open => {
                self.head = None;
                self.phase = Phase::Closing {
                    write_shut: false,
                    peer_closed: true,
                };
                self.deadline = closing_deadline(now, config);
            }
        }
        abrupt
    }

    /// The server started draining: a closing session must be done by the
    /// drain's end rather than its own close timeout.
    pub fn on_drain(&mut self, now: Now, config: &SessionConfig) {
        if matches!(self.phase, Phase::Closing { .. }) {
            self.deadline = closing_deadline(now, config);
        }
    }

    /// The peer will send nothing that matters (its close frame or its FIN
    /// came): reading it would only discard bytes.
    pub fn reads_done(&self) -> bool {
        matches!(
            self.phase,
            Phase::Closing {
                peer_closed: true,
                ..
            }
        )
    }

    /// The close handshake is over (or the peer is gone) and our bytes are
    /// out: nothing is left to wait for.
    pub fn is_done(&self) -> bool {
        self.reads_done() && self.wq.is_none()
    }
}
