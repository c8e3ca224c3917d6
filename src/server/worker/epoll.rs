//! The epoll event loop (mio): wait for readiness, read sockets until
//! WouldBlock into their sessions, write what the sessions produced with
//! `send`/`sendmsg`, accept in batches; with `--tls-cert`, through the TLS
//! layer (`tls_io`, `worker::tls`). What it shares with the io_uring loop
//! is in the parent module.

use std::io::{self, Read};
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Events, Poll, Token};

use super::super::loop_io::Io;
use super::super::no_sigpipe::NoSigPipe;
use super::super::tls_io::{ConnSink, TlsState};
use super::accept::AcceptState;
use super::tls::{TlsReadResult, TlsWorker};
use super::{Worker, FLUSH_AT, LISTENER, READ_BUDGET, WAKER};
use crate::session::Now;
use crate::stats::WorkerStats;

/// The epoll loop's side of a worker: its poll and its listener.
pub(crate) struct Epoll {
    pub poll: Poll,
    pub accept: AcceptState,
}

/// What the epoll loop keeps per connection: the socket and, with TLS, the
/// TLS layer between it and the session (boxed, so that a plain connection
/// grows by one pointer).
pub(crate) struct EpollConn {
    pub stream: TcpStream,
    pub tls: Option<Box<TlsState>>,
}

impl EpollConn {
    /// Ciphertext waiting for the socket.
    fn tls_pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.has_pending())
    }
}

impl Io for Epoll {
    type Handle = EpollConn;
    type Sink<'a> = ConnSink<'a>;

    fn sink<'a>(&'a mut self, h: &'a mut EpollConn) -> ConnSink<'a> {
        match h.tls.as_deref_mut() {
            Some(tls) => ConnSink::Tls {
                stream: &h.stream,
                tls,
            },
            None => ConnSink::Plain(NoSigPipe(&h.stream)),
        }
    }

    fn flush_held(&mut self, h: &mut EpollConn) -> io::Result<bool> {
        match h.tls.as_deref_mut() {
            Some(tls) => tls.flush(&h.stream),
            None => Ok(true),
        }
    }

    fn finish(&mut self, h: &mut EpollConn) -> bool {
        let Some(tls) = h.tls.as_deref_mut() else {
            return true;
        };
        if !tls.close_notify() {
            return true;
        }
        !matches!(tls.flush(&h.stream), Ok(false))
    }

    fn is_live(_: &EpollConn) -> bool {
        true
    }

    fn close(&mut self, _: &mut EpollConn) -> bool {
        // Dropping the stream with its slot closes the descriptor, which
        // also removes it from the epoll set.
        true
    }

    fn stop_listening(&mut self) {
        if let Some(mut l) = self.accept.listener.take() {
            // Closing the listener makes the kernel route new connections to
            // the other processes bound to the port.
            let _ = self.poll.registry().deregister(&mut l);
        }
    }

    fn accept_ready(&self) -> bool {
        self.accept.ready()
    }

    fn accept_wake(&self) -> Option<Instant> {
        [
            self.accept.paused_until,
            self.accept.left_group.as_ref().map(|l| l.retry_at),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

impl Worker<Epoll> {
    /// Runs the event loop until shutdown has drained (returns true), or
    /// until polling fails (returns false: the worker is lost).
    pub(crate) fn run(mut self) -> bool {
        let mut drained = false;
        let mut events = Events::with_capacity(1024);
        loop {
            // Connections set aside last turn are read this turn, after that
            // turn's fan-out went out.
            let carried = std::mem::take(&mut self.read_again);
            let timeout = if carried.is_empty() {
                // A fresh reading: this turn's work took time, and sleeping
                // from a stale one would oversleep the next tick by as much.
                self.poll_timeout(Instant::now())
            } else {
                Some(std::time::Duration::ZERO)
            };
            if let Err(e) = self.io.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(worker = self.id, error = %e, "poll failed; worker stops");
                break;
            }
            // The one clock reading of this turn's work.
            let now = Instant::now();
            let t = self.clock.now(now);
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.io.accept.pending = true,
                    WAKER => self.drain_inbox(now, t),
                    Token(key) => {
                        let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                        if ev.is_writable() {
                            self.on_writable(key);
                        }
                        if readable {
                            self.read_measured(key, ev.is_read_closed() || ev.is_error(), now, t);
                        }
                    }
                }
            }
            if self.fanout.inbox_more() {
                self.drain_inbox(now, t);
            }
            for key in carried {
                // Anything may have arrived: read until WouldBlock (or the
                // budget again).
                self.read_measured(key, true, now, t);
            }
            if self.io.accept.pending {
                self.accept_batch(now, t);
            }
            self.maybe_rejoin(now);
            if self.end_turn(now, t) {
                drained = true;
                break;
            }
        }
        self.close_all();
        tracing::debug!(worker = self.id, "worker stopped");
        drained
    }

    /// Reads until the socket is drained (or reading is paused), handing
    /// each chunk to the session as it arrives (decrypted first on a TLS
    /// connection), then writes the replies.
    pub(super) fn on_readable(&mut self, key: usize, read_closed: bool, now: Instant, t: Now) {
        let mut reads = 0;
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if !conn.session.wants_read() {
                break;
            }
            let read = match self.tls.as_mut() {
                Some(tw) if conn.stream.tls.is_some() => {
                    match read_tls(tw, &mut conn.stream, &self.stats) {
                        TlsReadResult::Bytes { raw, peer_closed } => Ok((raw, true, peer_closed)),
                        TlsReadResult::Eof => Ok((0, true, false)),
                        TlsReadResult::WouldBlock => Err(io::ErrorKind::WouldBlock.into()),
                        TlsReadResult::Interrupted => Err(io::ErrorKind::Interrupted.into()),
                        TlsReadResult::Failed => {
                            self.close_now(key);
                            return;
                        }
                    }
                }
                _ => (&conn.stream.stream)
                    .read(&mut self.scratch)
                    .map(|n| (n, false, false)),
            };
            match read {
                Ok((0, _, _)) => {
                    self.on_eof(key, t);
                    return;
                }
                Ok((n, from_tls, peer_closed)) => {
                    // `on_input` counts the bytes in; a TLS read counted
                    // its plaintext already.
                    let alive = if from_tls {
                        self.take_plaintext(key, now, t)
                    } else {
                        let mut scratch = std::mem::take(&mut self.scratch);
                        let alive = self.on_input(key, &mut scratch[..n], now, t);
                        self.scratch = scratch;
                        alive
                    };
                    if !alive {
                        return;
                    }
                    if self.out.len() >= FLUSH_AT && !self.flush(key) {
                        return;
                    }
                    if peer_closed {
                        self.on_close_notify(key, t);
                        return;
                    }
                    // A short read drained the socket. Under edge triggering
                    // new data raises a new edge, so stop here and save the
                    // read() that would return WouldBlock, unless the peer
                    // also closed (that edge is already spent).
                    if n < self.scratch.len() && !read_closed {
                        break;
                    }
                    reads += 1;
                    if reads >= READ_BUDGET {
                        self.read_again.push(key);
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.on_eof(key, t);
                    return;
                }
            }
        }
        self.flush(key);
    }

    fn on_writable(&mut self, key: usize) {
        if self
            .conns
            .get(key)
            .is_some_and(|c| c.session.wants_write() || c.stream.tls_pending())
        {
            self.flush(key);
        }
    }
}

/// Reads `conn`'s socket once through its TLS layer (straight into the
/// worker's scratch) and writes the records the read produced.
fn read_tls(tw: &mut TlsWorker, conn: &mut EpollConn, stats: &WorkerStats) -> TlsReadResult {
    let Some(tls) = conn.tls.as_deref_mut() else {
        return TlsReadResult::Eof;
    };
    let stream = &conn.stream;
    let (tc, records) = tls.parts();
    let result = tw.read(
        tc,
        super::SCRATCH_BYTES,
        |b| (&*stream).read(b),
        records,
        stats,
    );
    // Best effort after a failure: the alert tells the peer why.
    let flushed = tls.flush(stream);
    match result {
        TlsReadResult::Bytes { .. } if flushed.is_err() => TlsReadResult::Eof,
        r => r,
    }
}
