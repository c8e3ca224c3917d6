//! TLS between a client socket and its session: how a session's writes
//! become records ([`encrypt_batch`], both event loops), and on the epoll
//! loop the per-connection TLS state the slab keeps ([`TlsState`]) and the
//! [`Sink`] a session writes through ([`ConnSink`]), which encrypts on the
//! way to the socket. (The io_uring loop's sink is `uring::sink`.)
//!
//! The session stays plaintext-only. What it writes is encrypted in batches
//! of up to [`BATCH`] plaintext bytes (one TLS record per 16 KiB), so a
//! turn's fan-out frames for one subscriber become one record, not one per
//! frame. At most one encrypted batch waits per connection when the socket
//! refuses bytes; until it is out, the sink answers `WouldBlock`, so the
//! session queues *plaintext* as for a plain socket and its backpressure
//! and slow-consumer rules see the same numbers.

use std::io::{self, IoSlice, Write};
use std::net::Shutdown;

use mio::net::TcpStream;

use crate::session::Sink;
use crate::tls::TlsConn;

use super::no_sigpipe::NoSigPipe;

/// Most plaintext encrypted per write: four full records. Bounds the
/// ciphertext one connection may hold while its socket is full.
pub(crate) const BATCH: usize = 64 * 1024;

/// One connection's TLS: rustls' state plus the ciphertext the socket has
/// not taken yet (unallocated when none, so an idle connection holds no
/// buffer).
pub(crate) struct TlsState {
    pub conn: TlsConn,
    pending: Vec<u8>,
    /// How much of `pending` is already written.
    sent: usize,
    /// Send FIN once `pending` is out (the session shut its write side).
    fin_after: bool,
}

impl TlsState {
    pub fn new(conn: TlsConn) -> Self {
        Self {
            conn,
            pending: Vec::new(),
            sent: 0,
            fin_after: false,
        }
    }

    /// The TLS state and the buffer its records go to (behind what is
    /// pending), for a read through [`super::worker`]'s `TlsWorker`.
    pub fn parts(&mut self) -> (&mut TlsConn, &mut Vec<u8>) {
        (&mut self.conn, &mut self.pending)
    }

    /// Ciphertext waiting for the socket.
    pub fn has_pending(&self) -> bool {
        self.sent < self.pending.len() || self.fin_after
    }

    /// Queues close_notify (once). False if it could not be produced.
    pub fn close_notify(&mut self) -> bool {
        self.conn.close_notify(&mut self.pending).is_ok()
    }

    /// Writes pending ciphertext. `Ok(true)` when nothing is left.
    pub fn flush(&mut self, stream: &TcpStream) -> io::Result<bool> {
        while self.sent < self.pending.len() {
            match NoSigPipe(stream).write(&self.pending[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // Freed, not kept: an idle connection owns no buffer.
        self.pending = Vec::new();
        self.sent = 0;
        if self.fin_after {
            self.fin_after = false;
            stream.shutdown(Shutdown::Write)?;
        }
        Ok(true)
    }
}

/// Where a session's bytes go: the socket itself, or TLS over it.
pub(crate) enum ConnSink<'a> {
    Plain(NoSigPipe<'a>),
    Tls {
        stream: &'a TcpStream,
        tls: &'a mut TlsState,
    },
}

/// Encrypts up to [`BATCH`] bytes of `bufs` as one batch of records
/// appended to `out`; returns the plaintext bytes taken.
pub(crate) fn encrypt_batch(
    conn: &mut TlsConn,
    bufs: &[IoSlice<'_>],
    out: &mut Vec<u8>,
) -> io::Result<usize> {
    let tls_err = |e: crate::tls::TlsError| io::Error::other(e);
    let first = bufs.iter().find(|b| !b.is_empty());
    let Some(first) = first else {
        return Ok(0);
    };
    if first.len() >= BATCH || bufs.iter().filter(|b| !b.is_empty()).count() == 1 {
        let take = first.len().min(BATCH);
        conn.write_plaintext(&first[..take], out).map_err(tls_err)?;
        return Ok(take);
    }
    GATHER.with_borrow_mut(|gather| {
        gather.clear();
        for b in bufs {
            let room = BATCH - gather.len();
            if room == 0 {
                break;
            }
            gather.extend_from_slice(&b[..b.len().min(room)]);
        }
        conn.write_plaintext(gather, out).map_err(tls_err)?;
        Ok(gather.len())
    })
}

thread_local! {
    /// Plaintext gathered from a vectored write (one per worker thread).
    static GATHER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Write for ConnSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ConnSink::Plain(s) => s.write(buf),
            ConnSink::Tls { .. } => self.write_vectored(&[IoSlice::new(buf)]),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            ConnSink::Plain(s) => s.write_vectored(bufs),
            ConnSink::Tls { stream, tls } => {
                // The previous batch first: while it waits, the session
                // keeps the rest (plaintext) in its own queue.
                if !tls.flush(stream)? || tls.fin_after {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let n = encrypt_batch(&mut tls.conn, bufs, &mut tls.pending)?;
                tls.flush(stream)?;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink for ConnSink<'_> {
    fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            ConnSink::Plain(s) => s.shutdown_write(),
            ConnSink::Tls { stream, tls } => {
                // close_notify goes behind the pending records; the FIN
                // follows once all of it is out.
                tls.conn
                    .close_notify(&mut tls.pending)
                    .map_err(io::Error::other)?;
                tls.fin_after = true;
                tls.flush(stream).map(|_| ())
            }
        }
    }
}
